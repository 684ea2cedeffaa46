import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cellpix.core.bundle import ModelBundle
from cellpix.errors import BundleError


def make_bundle():
    return ModelBundle(tensors={"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                                "n": torch.tensor(7, dtype=torch.long)},
                       metadata={"hierarchy": {"name": "x"}, "genes": ["CD3D", "MS4A1"]})


def test_round_trip(tmp_path):
    path = tmp_path / "m.cellpix"
    checksum = make_bundle().save(path)
    loaded = ModelBundle.load(path)
    assert loaded.checksum == checksum
    assert loaded.metadata["genes"] == ["CD3D", "MS4A1"]
    # written from torch tensors, read as NumPy arrays (annotation needs no torch), the same values and checksum
    assert np.array_equal(loaded.tensors["w"], make_bundle().tensors["w"].numpy())
    assert loaded.tensors["n"].dtype == np.int64 and loaded.tensors["n"].shape == ()
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "m.cellpix"
    make_bundle().save(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        ModelBundle.load(path)


def test_edited_metadata_is_detected(tmp_path):
    path = tmp_path / "m.cellpix"
    make_bundle().save(path)
    raw = path.read_bytes()
    tampered = raw.replace(b"MS4A1", b"MS4A2")
    path.write_bytes(tampered)
    with pytest.raises(BundleError, match="checksum mismatch"):
        ModelBundle.load(path)


def test_truncated_foreign_and_wrong_type(tmp_path):
    path = tmp_path / "m.cellpix"
    make_bundle().save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BundleError, match="unreadable safetensors"):
        ModelBundle.load(path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(BundleError, match="not a cellpix model bundle"):
        ModelBundle.load(foreign)
    text = tmp_path / "model.json"
    text.write_text(json.dumps({"a": 1}))
    with pytest.raises(BundleError):
        ModelBundle.load(text)
    with pytest.raises(BundleError, match="no such model bundle"):
        ModelBundle.load(tmp_path / "missing.cellpix")


def test_drop_path_reaches_the_timm_trunk():
    """The paper preset's stochastic depth (0.2) is built into the EfficientNet blocks, and only when asked for."""
    from timm.layers import DropPath

    from cellpix.core.backbones import resolve_backbone

    def rates(module) -> list[float]:
        return [m.drop_prob for m in module.modules() if isinstance(m, DropPath)]

    spec = resolve_backbone("efficientnet_b0")
    asked = rates(spec.create(1, None, drop_path=0.2))
    assert asked and 0 < max(asked) <= 0.2
    assert not any(rates(spec.create(1, None)))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "test_efficientnet"])
def test_heads_fit_every_backbone_preset(name):
    """MobileNetV3's pooled output (1,024) differs from its num_features (576); the heads must follow the output."""
    from cellpix.core.hierarchy import Hierarchy
    from cellpix.core.model_config import ModelConfig
    from cellpix.core.network import HierarchicalClassifier

    hierarchy = Hierarchy.from_pairs([("T", "CD4"), ("T", "CD8"), ("B", "B")], name="tiny")
    model = HierarchicalClassifier(hierarchy, ModelConfig(backbone=name, in_chans=1, pixels=32)).eval()
    base, subtypes = model(torch.rand(2, 1, 32, 32))
    assert base.shape == (2, 2) and [s.shape for s in subtypes] == [(2, 2)]
