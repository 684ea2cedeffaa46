"""The plugins in plugins/ and the plugin scaffold, each installed as a real package and run through its own tests."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

from cellpix.plugin_docs import render
from tests.conftest import ROOT, SHARED, child_environment, require

PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def pip_install_target(package: Path, target: Path) -> None:
    """Install a package into a folder, offline: no dependencies fetched, the build uses this venv's setuptools."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True)


def test_docs_are_generated_from_the_hookspecs():
    committed = (ROOT / "docs" / "plugins.md").read_text()
    assert committed == render(), "docs/plugins.md is stale: run `cellpix plugins docs -o docs/plugins.md`"
    for hook in ("cellpix_hierarchies", "cellpix_backbones", "cellpix_integration_methods",
                 "cellpix_layout_methods", "cellpix_models", "cellpix_register_commands"):
        assert f"### `{hook}(" in committed


def test_there_are_two_independent_plugins():
    assert {p.name for p in PLUGINS} >= {"cellpix-tumor", "cellpix-sparsenet"}
    for plugin in PLUGINS:
        assert (plugin / "README.md").exists() and list((plugin / "tests").glob("test_*.py"))
        assert "[project.entry-points.cellpix]" in (plugin / "pyproject.toml").read_text()


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_passes_its_own_tests_when_installed(plugin, tmp_path):
    require(SHARED / "zheng2017_pbmc_sorted.h5ad")  # both plugins test on the real Zheng cells
    pip_install_target(plugin, tmp_path / "site")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(plugin / "tests")],
                         capture_output=True, text=True, cwd=tmp_path,
                         env=child_environment(PYTHONPATH=str(tmp_path / "site"), CELLPIX_SHARED_DATA=str(SHARED)))
    print(run.stdout[-2000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1] and "failed" not in run.stdout.splitlines()[-1]


def test_scaffolded_plugin_passes_its_tests_in_a_fresh_venv(tmp_path):
    # It ships a model (here cellpix's own PBMC bundle stands in for the author's): packaged with its card.
    made = subprocess.run([sys.executable, "-m", "cellpix", "plugins", "new", "lung-atlas", "--dest", str(tmp_path),
                           "--model", "pbmc-zheng2017"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "cellpix-lung-atlas"
    again = subprocess.run([sys.executable, "-m", "cellpix", "plugins", "new", "lung-atlas", "--dest", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    # A new, empty venv; cellpix and pytest reach it through a .pth file (no network here to install them).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site / "cellpix-dev.pth").write_text("\n".join([*site.getsitepackages(), str(ROOT / "src")]) + "\n")
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    str(package)], check=True)
    listing = subprocess.run([str(python), "-m", "cellpix", "hierarchies", "list"], capture_output=True, text=True)
    assert "lung-atlas: 2 base types" in listing.stdout, listing.stderr
    models = subprocess.run([str(python), "-m", "cellpix", "models", "list"], capture_output=True, text=True)
    assert "lung-atlas: Human PBMC" in models.stdout and "pbmc-zheng2017" in models.stdout, models.stderr
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout + run.stderr
    bad = subprocess.run([sys.executable, "-m", "cellpix", "plugins", "new", "Bad Name", "--dest", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "lower-case letters" in bad.stderr
