"""The model bundle: one self-describing, pickle-free file a user can pass around.

A bundle is a valid safetensors file. Its tensors are the network weights;
its header metadata carries a JSON document (gene panel, normalisation,
scaling and gene → pixel layout, hierarchy, backbone configuration, training
provenance and metrics, novelty calibration) under a schema version, plus a
SHA-256 checksum over that JSON and every tensor's bytes (and a second one
over the JSON alone, so that commands needing only the metadata need not
read the weights). Loading verifies the checksum, so a file corrupted in storage or transfer, or edited without
recomputing it, is refused rather than producing silent nonsense. The
checksum is not keyed: anyone who edits a bundle can recompute it, so it is
no proof of who wrote the file. Trust a bundle by where it came from, and
compare its checksum (``cellpix inspect``) with the one its author published.
Nothing in it is executable, so loading cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from cellpix.data.io import atomic_path
from cellpix.errors import BundleError

BUNDLE_FORMAT = "cellpix-bundle"
BUNDLE_SCHEMA = 1


def _canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def as_array(tensor: Any) -> np.ndarray:
    """A C-contiguous NumPy array of a NumPy array or a torch tensor (detached, on the CPU).

    Bundles are read and written in NumPy, so that annotation needs no torch; training hands torch tensors.
    """
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    array = np.asarray(tensor)
    return array if array.flags.c_contiguous else array.copy(order="C")  # keeps a 0-d array 0-d


def compute_checksum(metadata_json: str, tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata JSON and each tensor (name, dtype, shape, bytes) in name order.

    The dtype is spelled as torch spells it (``torch.float32``), as bundles were written when they were read in
    torch: the same bytes keep the same checksum.
    """
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        array = as_array(tensors[name])
        digest.update(f"{name}|torch.{array.dtype.name}|{tuple(array.shape)}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """Weights plus everything needed to render and annotate a query exactly as in training."""

    tensors: dict[str, np.ndarray]  # torch tensors are accepted when saving
    metadata: dict[str, Any]
    checksum: str = ""

    def save(self, path: str | Path) -> str:
        """Write atomically; returns the checksum."""
        tensors = {k: as_array(v) for k, v in self.tensors.items()}
        meta_json = _canonical_json(self.metadata)
        self.checksum = compute_checksum(meta_json, tensors)
        header = {
            "format": BUNDLE_FORMAT,
            "schema": str(BUNDLE_SCHEMA),
            "cellpix_metadata": meta_json,
            "checksum_sha256": self.checksum,
            "metadata_sha256": hashlib.sha256(meta_json.encode()).hexdigest(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
            _sort_header(Path(tmp))
        return self.checksum

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read and verify a bundle: format, schema and the checksum over metadata and every tensor."""
        path = Path(path)
        with _opened(path) as handle:
            header = _checked_header(path, handle.metadata() or {})
            try:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            except Exception as exc:  # a truncated file fails here, after a readable header
                raise BundleError(f"{path}: not a cellpix model bundle (unreadable tensors: {exc})") from exc
        meta_json = header.get("cellpix_metadata", "")
        expected = header.get("checksum_sha256", "")
        actual = compute_checksum(meta_json, tensors)
        if actual != expected:
            raise BundleError(f"{path}: checksum mismatch (file is corrupt or was modified): "
                              f"expected {expected[:12]}…, got {actual[:12]}…")
        return cls(tensors=tensors, metadata=_parse_metadata(path, meta_json), checksum=actual)


def _sort_header(path: Path) -> None:
    """Rewrite the safetensors header with sorted keys, so the same bundle is the same bytes.

    safetensors writes its metadata from a hash map, in an order that changes from process to process; a model
    published by its file's sha256 (``cellpix models``) must rebuild to identical bytes. The header is JSON
    after an 8-byte little-endian length, padded with spaces to 8 bytes; tensor offsets count from its end, so
    only the length changes.
    """
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        data = handle.read()
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little"))
        handle.write(text)
        handle.write(data)


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    if not path.is_file():
        raise BundleError(f"{path}: no such model bundle")
    try:
        handle = safe_open(str(path), framework="np")
    except Exception as exc:  # safetensors raises its own error types for any broken header
        raise BundleError(f"{path}: not a cellpix model bundle (unreadable safetensors: {exc})") from exc
    with handle:
        yield handle


def _checked_header(path: Path, header: dict[str, str]) -> dict[str, str]:
    if header.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: a safetensors file, but not a cellpix model bundle")
    schema = header.get("schema")
    if schema != str(BUNDLE_SCHEMA):
        if str(schema).isdigit() and int(schema) > BUNDLE_SCHEMA:
            raise BundleError(f"{path}: written by a newer cellpix (bundle schema {schema}; this cellpix "
                              f"{_own_version()} reads schema {BUNDLE_SCHEMA}); upgrade cellpix to load it")
        raise BundleError(f"{path}: bundle schema {schema!r} is not supported by this cellpix "
                          f"(supports {BUNDLE_SCHEMA}); retrain or upgrade cellpix")
    return header


def _own_version() -> str:
    from cellpix import __version__

    return __version__


def _parse_metadata(path: Path, meta_json: str) -> dict[str, Any]:
    try:
        return json.loads(meta_json)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: bundle metadata is not valid JSON") from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The verified metadata of a bundle, without reading its weights.

    For commands that only need the panel, layout or hierarchy. The metadata's own checksum is verified; the
    weights are checked when a command loads the model. A bundle written before that checksum existed is
    verified whole.
    """
    path = Path(path)
    with _opened(path) as handle:
        header = _checked_header(path, handle.metadata() or {})
    expected = header.get("metadata_sha256")
    if expected is None:
        return ModelBundle.load(path).metadata
    meta_json = header.get("cellpix_metadata", "")
    if hashlib.sha256(meta_json.encode()).hexdigest() != expected:
        raise BundleError(f"{path}: metadata checksum mismatch (file is corrupt or was modified)")
    return _parse_metadata(path, meta_json)
