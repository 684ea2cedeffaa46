"""Ready-made models: the built-in PBMC model by name everywhere a bundle is accepted, the registry's downloads
(offline, through ``file://`` URLs), their failures, model cards and packaging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

import cellpix as cx
from cellpix import plugins
from cellpix.cli import cli
from cellpix.core.models import ModelEntry, file_sha256, read_manifest, registered_models
from cellpix.errors import BundleError, CellpixError
from cellpix.hookspecs import hookimpl
from tests.conftest import ROOT

BUILTIN = "pbmc-zheng2017"
DATA = ROOT / "tests" / "data"


def builtin_file() -> Path:
    return registered_models()[BUILTIN].file


class Mirror:
    """A plugin registering one model by URL, for the download path (registered in-process, then removed)."""

    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry

    @hookimpl
    def cellpix_models(self):
        return {self.entry.name: self.entry}


@pytest.fixture
def mirrored(tmp_path, monkeypatch):
    """Register ``mirror-NAME`` models pointing at file:// URLs, with the cache in a fresh folder."""
    monkeypatch.setenv("CELLPIX_MODELS", str(tmp_path / "cache"))
    registered = []

    def register(name: str, url: str, sha256: str) -> ModelEntry:
        entry = ModelEntry(name=name, sha256=sha256, url=url, card={"title": f"{name} by URL"})
        plugin = Mirror(entry)
        plugins.get_plugin_manager().register(plugin, name=name)
        registered.append(plugin)
        return entry

    yield register
    for plugin in registered:
        plugins.get_plugin_manager().unregister(plugin)


def test_the_builtin_model_is_listed_with_its_checksum_and_card():
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert f"{BUILTIN}: Human PBMC" in result.output
    assert f"sha256 {file_sha256(builtin_file())}" in result.output  # the manifest's sha256 is the file's
    shown = CliRunner().invoke(cli, ["models", "show", BUILTIN, "--json"])
    card = json.loads(shown.output)["card"]
    ids = {row["name"]: row["ontology_id"] for row in card["labels"]}
    assert ids["CD14+ Monocyte"] == "CL:0001054" and ids["T cell"] == "CL:0000084"
    assert card["gene_panel"]["species"] == "Homo sapiens" and card["licence"].startswith("CC-BY-4.0")
    assert card["figures"]["cross_validation"]["cellpix default"]["subtype_accuracy"] > 0.85
    assert card["bundle_schema"] == 1 and card["cellpix_version"]


def test_annotate_by_name_offline_with_no_other_file(tmp_path):
    """`cellpix annotate QUERY -m pbmc-zheng2017` on held-back Zheng cells (the committed fixture)."""
    out = tmp_path / "annotated.h5ad"
    env = {**os.environ, "CELLPIX_MODELS": str(tmp_path / "empty-cache")}  # nothing downloaded, nothing needed
    run = subprocess.run([sys.executable, "-m", "cellpix", "annotate", str(DATA / "zheng_query.h5ad"), "-m", BUILTIN,
                          "-o", str(out), "--quiet"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    annotated = ad.read_h5ad(out)
    truth = annotated.obs["lineage"].astype(str).to_numpy()
    assert (annotated.obs["cellpix_base"].astype(str).to_numpy() == truth).mean() > 0.9
    assert not (tmp_path / "empty-cache").exists()  # a packaged model is used where it is installed


def test_the_builtin_model_on_a_query_with_fewer_genes_warns_with_the_coverage(tmp_path):
    """Kang's committed cells have 6,026 genes: part of the panel is missing, said in uns and on the console."""
    query = ad.read_h5ad(DATA / "kang_ifnb.h5ad")
    model = cx.load_model(BUILTIN)
    shown = repr(model)  # a notebook shows one line, not every weight
    assert len(shown) < 300 and "'pbmc-sorted'" in shown and "5000 genes" in shown
    annotated = cx.annotate(query, model)
    assert "cellpix_label" not in query.obs  # a copy by default
    in_place = query.copy()
    assert cx.annotate(in_place, model, copy=False) is None  # scanpy's copy=False: the entries join the object
    assert (in_place.obs["cellpix_label"].astype(str) == annotated.obs["cellpix_label"].astype(str)).all()
    assert set(annotated.obsm) <= set(in_place.obsm) and in_place.uns["cellpix"]["n_cells"] == query.n_obs
    coverage = annotated.uns["cellpix"]["gene_matching"]["model_0"]["coverage"]
    assert 0.5 < coverage < 1
    assert any("genes" in w and "%" in w for w in annotated.uns["cellpix"]["warnings"])
    fewer = query[:, query.var_names[: query.n_vars // 10]].copy()  # a tenth of them: refused, in one line
    result = CliRunner().invoke(cli, ["annotate", str(_write(fewer, tmp_path / "few.h5ad")), "-m", BUILTIN,
                                      "-o", str(tmp_path / "out.h5ad")])
    assert result.exit_code == 1 and "were found in the query" in result.output
    assert not (tmp_path / "out.h5ad").exists()


def _write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def test_a_name_works_in_the_api_inspect_explain_and_evaluate(tmp_path):
    model = cx.load_model(BUILTIN)
    assert model.hierarchy.name == "pbmc-sorted" and model.checksum
    inspected = CliRunner().invoke(cli, ["inspect", BUILTIN])
    assert inspected.exit_code == 0, inspected.output
    assert "model card" in inspected.output and "CD14+ Monocyte [CL:0001054]" in inspected.output
    unknown = CliRunner().invoke(cli, ["annotate", str(DATA / "zheng_query.h5ad"), "-m", "pbmc-zheng", "-o",
                                       str(tmp_path / "o.h5ad")])
    assert unknown.exit_code == 2 and f"unknown model 'pbmc-zheng'. Known models: {BUILTIN}" in unknown.output
    missing = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.cellpix")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_download_through_a_file_url_is_verified_cached_and_reused(tmp_path, mirrored):
    source = tmp_path / "served" / "model.cellpix"
    source.parent.mkdir()
    shutil.copyfile(builtin_file(), source)
    mirrored("mirror-ok", source.as_uri(), file_sha256(source))
    fetched = CliRunner().invoke(cli, ["models", "fetch", "mirror-ok", "--quiet"])
    assert fetched.exit_code == 0, fetched.output
    cached = Path(fetched.output.strip())
    assert cached.parent == tmp_path / "cache" and file_sha256(cached) == file_sha256(source)
    first_write = cached.stat().st_mtime_ns
    source.unlink()  # the second use reads the cache, not the URL
    annotated = cx.annotate(ad.read_h5ad(DATA / "zheng_query.h5ad"), "mirror-ok")
    assert annotated.n_obs == 100 and cached.stat().st_mtime_ns == first_write
    out = tmp_path / "copy.cellpix"
    copied = CliRunner().invoke(cli, ["models", "fetch", "mirror-ok", "-o", str(out), "--quiet"])
    assert copied.exit_code == 0 and file_sha256(out) == file_sha256(cached)


def test_a_checksum_mismatch_or_no_network_keeps_nothing(tmp_path, mirrored):
    source = tmp_path / "model.cellpix"
    shutil.copyfile(builtin_file(), source)
    mirrored("mirror-tampered", source.as_uri(), "0" * 64)
    mirrored("mirror-offline", "http://127.0.0.1:9/model.cellpix", file_sha256(source))
    for name, says in (("mirror-tampered", "does not match its published sha256"),
                       ("mirror-offline", "cannot download")):
        result = CliRunner().invoke(cli, ["models", "fetch", name, "--quiet"])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and says in lines[0] and "nothing was kept" in lines[0]
        assert not any((tmp_path / "cache").iterdir())  # no partial download, no temporary file
    with pytest.raises(CellpixError, match="cannot download"):
        cx.load_model("mirror-offline")


def test_a_bundle_from_a_newer_schema_is_refused_with_the_version_it_needs(tmp_path):
    with safe_open(str(builtin_file()), framework="pt") as handle:
        header, tensors = dict(handle.metadata()), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "future.cellpix"), metadata={**header, "schema": "2"})
    with pytest.raises(BundleError, match=r"newer cellpix \(bundle schema 2; this cellpix .* reads schema 1\)"):
        cx.load_model(tmp_path / "future.cellpix")


def test_package_writes_the_card_into_the_bundle_and_the_manifest(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("title: PBMC again\nlicence: MIT\nfigures: {cross_dataset: {kang_ctrl: 0.9}}\n")
    folder = tmp_path / "bundles"
    result = CliRunner().invoke(cli, ["models", "package", str(builtin_file()), "--name", "pbmc-again", "--into",
                                      str(folder), "--card", str(card)])
    assert result.exit_code == 0, result.output
    entry = read_manifest(folder)["pbmc-again"]
    assert entry.file == folder / "pbmc-again.cellpix" and entry.sha256 == file_sha256(entry.file)
    assert entry.card["title"] == "PBMC again" and entry.card["figures"]["cross_dataset"] == {"kang_ctrl": 0.9}
    assert entry.card["figures"]["validation_split"]  # derived from the bundle, kept beside the author's
    inspected = CliRunner().invoke(cli, ["inspect", str(entry.file), "--json"])
    assert json.loads(inspected.output)["card"]["licence"] == "MIT"
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: []\n")  # derived fields are not the author's to set
    refused = CliRunner().invoke(cli, ["models", "package", str(builtin_file()), "--name", "x", "--into",
                                       str(tmp_path / "other"), "--card", str(bad)])
    assert refused.exit_code == 1 and "derived from the bundle" in refused.output


def test_the_builtin_models_predictions_are_those_of_its_recorded_training():
    """The shipped file is the one the build recorded: its validation scores are re-derivable only by
    training; here its card's figures and its own metadata agree, and its weights give confident calls."""
    model = cx.load_model(BUILTIN)
    card = registered_models()[BUILTIN].card
    assert card["figures"]["validation_split"] == model.metadata["training"]["validation_metrics"]
    assert card["training_data"]["cells"] == model.metadata["training"]["n_cells"] == 3773
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    probabilities = cx.annotate(query, model).obs["cellpix_base_probability"].to_numpy()
    assert np.median(probabilities) > 0.9
