import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "benchmarks", "galaxy_tools"]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_choices_are_the_apis():
    """The CLI spells its choices out so `--help` needs no torch import; they must stay the API's own lists."""
    import click

    from cellpix.cli import cli
    from cellpix.core.predict import PRECISIONS
    from cellpix.steps.annotate.annotate import NOVELTY_RULES
    from cellpix.steps.train.trainer import LOSSES, PRESETS

    def choices(command: str, option: str) -> tuple[str, ...]:
        param = next(p for p in cli.commands[command].params if p.name == option)
        assert isinstance(param.type, click.Choice)
        return tuple(param.type.choices)

    assert choices("annotate", "precision") == PRECISIONS
    assert choices("annotate", "novelty_rule") == NOVELTY_RULES
    assert choices("train", "loss") == LOSSES
    assert choices("train", "preset") == tuple(PRESETS)
