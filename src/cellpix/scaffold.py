"""`cellpix plugins new NAME`: a plugin package that installs, registers and passes its own tests as made.

The package registers one example hierarchy (a YAML file with Cell Ontology
IDs) through the ``cellpix`` entry point; authors replace it with their
tissue, or add a backbone or integration method next to it.
"""

from __future__ import annotations

import re
from pathlib import Path

from cellpix import __version__
from cellpix.errors import CellpixError

NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "cellpix-{name}"
version = "0.1.0"
description = "A cellpix plugin: {name}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["cellpix>={cellpix_version}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This entry point is how cellpix finds the plugin.
[project.entry-points.cellpix]
{module} = "{module}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{module} = ["hierarchies/*.yaml", "bundles/*.cellpix", "bundles/models.json"]
"""

INIT = '''\
"""cellpix plugin {name}: registers the hierarchies in hierarchies/*.yaml and the models in bundles/.

The models are listed, with the sha256 of each file and its model card, in bundles/models.json, which
`cellpix models package BUNDLE --name NAME --into src/{module}/bundles` writes.

Add more hooks from cellpix.hookspecs here (backbones, integration methods,
layout methods, CLI commands); `cellpix plugins` lists what is loaded.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cellpix.plugins import Hierarchy, hookimpl, read_manifest

HIERARCHY_DIR = Path(__file__).with_name("hierarchies")
MODEL_DIR = Path(__file__).with_name("bundles")


@hookimpl
def cellpix_hierarchies():
    return {{path.stem: partial(Hierarchy.from_yaml, path) for path in sorted(HIERARCHY_DIR.glob("*.yaml"))}}


@hookimpl
def cellpix_models():
    return read_manifest(MODEL_DIR)
'''

HIERARCHY = """\
name: {name}
description: >-
  An example two-level hierarchy; replace it with your tissue's base types
  and subtypes. Labels in your reference's obs column must be the subtype
  names (or the base name for a base type without subtypes).
source: your reference atlas
cell_types:
  - name: T cell
    ontology_id: CL:0000084
    subtypes:
      - {{name: CD4 T cell, ontology_id: CL:0000624}}
      - {{name: CD8 T cell, ontology_id: CL:0000625}}
  - name: Endothelial
    ontology_id: CL:0000115
"""

TESTS = '''\
"""Out-of-the-box tests of the {name} plugin: found by cellpix, valid hierarchy, valid Cell Ontology IDs."""

import json
import subprocess
import sys

from cellpix import plugins
from cellpix.core.hierarchy import check_ontology


def test_cellpix_lists_the_plugin():
    listing = subprocess.run([sys.executable, "-m", "cellpix", "plugins", "--json"], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = {{row["name"] for row in json.loads(listing.stdout)}}
    assert "cellpix-{name}" in names


def test_every_shipped_model_matches_its_checksum_and_loads():
    from cellpix.core.models import fetch, read_manifest
    from cellpix.core.trained import TrainedModel
    from {module} import MODEL_DIR

    for name in read_manifest(MODEL_DIR):
        model = TrainedModel.load(fetch(name))
        assert model.layout.n_genes > 0


def test_hierarchy_is_registered_and_valid():
    tree = plugins.resolve_lazy(plugins.lookup("hierarchies", "{name}", "hierarchy"))
    assert tree.base_names == ["T cell", "Endothelial"]
    assert check_ontology(tree) == []
'''

README = """\
# cellpix-{name}

A [cellpix](https://github.com/cellpix/cellpix) plugin, made by `cellpix plugins new {name}`.

```bash
pip install -e ".[test]"
cellpix plugins                      # lists cellpix-{name}
cellpix hierarchies show {name}
pytest
```

Edit `src/{module}/hierarchies/{name}.yaml` (check it with `cellpix hierarchies validate`), or add
hooks from `cellpix.hookspecs` to `src/{module}/__init__.py`. Publish with `python -m build` and
`twine upload dist/*`; users then `pip install cellpix-{name}`.

## Ship a trained model with the hierarchy

```bash
cellpix train ref.h5ad --layout layout/layout.json --labels cell_type --hierarchy {name} -o trained.cellpix
cellpix models package trained.cellpix --name {name} --into src/{module}/bundles --card card.yaml
cellpix models list                  # {name}, its sha256 and card; users run: cellpix annotate q.h5ad -m {name}
```

`card.yaml` holds what only you know: `title`, `training_data`, `provenance`, `figures` (cross-validation
and cross-dataset scores), `licence`, `intended_use`, `limitations`; the labels with their Cell Ontology
IDs, the gene panel and species, and the versions are read from the bundle. A model of a few MB belongs
in the package; for a larger one add `--url https://…` (the manifest then points there, with its sha256,
and cellpix downloads it once into its cache) and upload the written file to that URL.
"""


def new_plugin(name: str, destination: str | Path = ".", model: str | Path | None = None) -> Path:
    """Write the package ``cellpix-NAME`` under ``destination``; refuses to overwrite anything.

    With ``model`` (a bundle), the package ships it as the model ``NAME`` (``cellpix models package``).
    """
    if not NAME.match(name):
        raise CellpixError(f"plugin name {name!r}: use lower-case letters, digits and dashes (e.g. lung-atlas)")
    root = Path(destination) / f"cellpix-{name}"
    if root.exists():
        raise CellpixError(f"{root} already exists; choose another name or folder")
    if model is not None:  # a bad bundle is refused before anything is written
        from cellpix.core.bundle import ModelBundle

        ModelBundle.load(model)
    module = "cellpix_" + name.replace("-", "_")
    values = {"name": name, "module": module, "cellpix_version": __version__}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{module}/__init__.py": INIT,
        f"src/{module}/hierarchies/{name}.yaml": HIERARCHY,
        "tests/test_plugin.py": TESTS,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    bundles = root / "src" / module / "bundles"
    if model is not None:
        from cellpix.core.models import package_model

        package_model(model, name, bundles)
    else:
        write_manifest(bundles)
    return root


def write_manifest(directory: Path) -> None:
    """An empty model manifest, so the package's model hook works before it ships a model."""
    import json

    from cellpix.core.models import MANIFEST_NAME, MANIFEST_SCHEMA

    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).write_text(json.dumps({"schema": MANIFEST_SCHEMA, "models": []}, indent=2) + "\n")
