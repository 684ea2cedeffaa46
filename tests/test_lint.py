import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "benchmarks", "galaxy_tools"]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_choices_and_stated_defaults_are_the_apis():
    """The CLI takes its choice lists, and the defaults its help states, from the API's own constants (through
    cellpix.api.files), so a choice or a default is written once."""
    import click

    from cellpix.cli import cli
    from cellpix.core.clusters import DEFAULT_RESOLUTION
    from cellpix.core.predict import PRECISIONS
    from cellpix.steps.annotate.options import CHUNK_SIZE, NOVELTY_RULES
    from cellpix.steps.explain.options import BACKGROUNDS, TARGETS
    from cellpix.steps.integrate.options import HVG_FLAVORS
    from cellpix.steps.train.config import DEFAULT_LR, KEEPS, LOSSES, OPTIMIZERS, PRESETS, TrainConfig

    def option(command: str, name: str) -> click.Option:
        return next(p for p in cli.commands[command].params if p.name == name)

    def choices(command: str, name: str) -> tuple[str, ...]:
        param = option(command, name)
        assert isinstance(param.type, click.Choice)
        return tuple(param.type.choices)

    assert choices("annotate", "precision") == PRECISIONS
    assert choices("annotate", "novelty_rule") == NOVELTY_RULES
    assert choices("train", "loss") == LOSSES
    assert choices("train", "optimizer") == OPTIMIZERS
    assert choices("train", "preset") == tuple(PRESETS)
    assert choices("integrate", "hvg_flavor") == HVG_FLAVORS
    assert choices("train", "keep") == KEEPS
    assert choices("explain", "background") == BACKGROUNDS
    assert choices("explain", "target") == TARGETS
    assert f"default {CHUNK_SIZE:,}" in option("annotate", "chunk_size").help
    assert f"default {DEFAULT_RESOLUTION:g}" in option("annotate", "cluster_resolution").help
    assert f"default {TrainConfig.mask_fraction:g}" in option("train", "mask_fraction").help
    assert f"default {TrainConfig.loss}" in option("train", "loss").help
    assert all(f"{lr:g} for {name}" in option("train", "lr").help for name, lr in DEFAULT_LR.items())


def test_the_help_of_every_command_imports_no_torch():
    """An annotate-only install has no torch (the read-out runs in NumPy), and `--help` must work there."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom cellpix.cli import cli\n"
            "for name in [None, *cli.commands]:\n"
            "    result = CliRunner().invoke(cli, [name, '--help'] if name else ['--help'])\n"
            "    assert result.exit_code == 0, (name, result.output)\n"
            "print(sorted(m for m in ('torch', 'timm', 'scanpy', 'shap') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
