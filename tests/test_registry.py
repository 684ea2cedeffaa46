import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellpix import plugins
from cellpix.errors import UnknownNameError

FAKE = Path(__file__).parent / "data" / "fake_plugin"


def test_builtins_are_registered_like_plugins():
    rows = plugins.plugin_summaries()
    names = {r["module"] for r in rows}
    assert set(plugins.DEFAULT_PLUGINS) <= names
    assert {"immune-schdeepinsight", "pbmc-sorted"} <= set(plugins.registered("hierarchies"))
    assert {"tsne", "umap", "pca", "kpca"} <= set(plugins.registered("layout_methods"))
    assert "resnet18" in plugins.registered("backbones")


def test_unknown_names_list_what_exists():
    with pytest.raises(UnknownNameError, match=r"Known hierarchies: (.+, )?immune-schdeepinsight, pbmc-sorted"):
        plugins.lookup("hierarchies", "lung-atlas", "hierarchy")
    from cellpix.core.backbones import resolve_backbone

    with pytest.raises(UnknownNameError, match="resnet18"):
        resolve_backbone("no_such_net")
    assert resolve_backbone("convnext_atto").name == "convnext_atto"  # any timm name works


def run_cli(args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cellpix", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The tiny third-party plugin, installed into a target folder (no network needed)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--target", str(target), str(FAKE)], check=True)
    return target


def test_third_party_plugin_is_found_and_usable(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_cli(["plugins"], env)
    assert listing.returncode == 0, listing.stderr
    assert "cellpix-fake-tissue 1.2.3 (plugin" in listing.stdout and "cellpix_hierarchies" in listing.stdout
    shown = run_cli(["hierarchies", "show", "fake-gut"], env)
    assert shown.returncode == 0 and "Enterocyte" in shown.stdout
    blocked = run_cli(["hierarchies", "show", "fake-gut"], {**env, "CELLPIX_DISABLE_PLUGINS": "1"})
    assert blocked.returncode != 0 and "unknown hierarchy 'fake-gut'" in blocked.stderr
    assert "pbmc-sorted" in blocked.stderr


def test_validate_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - {name: A}\n  - {name: B, parent: Missing}\n")
    result = run_cli(["hierarchies", "validate", str(bad)])
    assert result.returncode == 1 and "orphan subtype 'B'" in result.stderr
    good = Path(__file__).parents[1] / "src/cellpix/builtin/hierarchies/pbmc-sorted.yaml"
    ok = run_cli(["hierarchies", "validate", str(good)])
    assert ok.returncode == 0 and "valid (6 base types, 11 subtypes" in ok.stdout
