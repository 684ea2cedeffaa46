"""Reading the small YAML files users hand cellpix (hierarchies, model cards) without trusting them.

``yaml.safe_load`` stops code execution, not a billion-laughs bomb: a 420-byte file of nested aliases expands to
9^8 nodes. None of these files needs an alias, and a Galaxy server reads files its users upload, so aliases are
refused and the size is bounded. Every failure is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cellpix.errors import CellpixError

MAX_YAML_BYTES = 1_000_000  # the largest built-in hierarchy is a few kB


class AliasRefused(yaml.YAMLError):
    """A YAML alias in a file that must not have one."""


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (see the module docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are refused in "
                               "this file; write each entry out")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, what: str, error: type[CellpixError] = CellpixError) -> Any:
    """The parsed content of ``path`` (YAML, or JSON, which is YAML), or ``error`` with one line.

    ``what`` names the kind of file in the messages ("a hierarchy", "a model card").
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise error(f"{path}: {path.stat().st_size:,} bytes; {what} file is at most {MAX_YAML_BYTES:,}")
        return yaml.load(path.read_text(encoding="utf-8"), Loader=NoAliasLoader)
    except FileNotFoundError as exc:
        raise error(f"{path}: no such file") from exc
    except AliasRefused as exc:
        raise error(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file (byte {exc.start}); {what} is YAML text, saved as UTF-8") from exc
    except IsADirectoryError as exc:
        raise error(f"{path}: is a folder, not a YAML file") from exc
