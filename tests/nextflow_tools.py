"""Static reading of Nextflow files without a Nextflow engine (none can be installed on these machines).

No real Nextflow parser is available from PyPI: tree-sitter-groovy fails on
process bodies such as ``tuple val(meta), path(x)``. These helpers therefore
read the few structures the tests need (process blocks, input/output lines,
script/stub GStrings, params) and render script blocks as Groovy would for
simple ``$var``/``${var}`` interpolation, so the exact command lines can run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TOKENS = re.compile(r'"""[\s\S]*?"""|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|//[^\n]*|/\*[\s\S]*?\*/')
SECTION = re.compile(r"^\s{4}(input|output|when|script|stub):\s*$", re.M)


@dataclass
class Process:
    name: str
    directives: list[str]
    inputs: list[str]
    outputs: list[str]
    script: str
    stub: str
    script_defs: str


def balanced(text: str) -> bool:
    """Braces, brackets and parentheses balance outside strings and comments."""
    text = TOKENS.sub("", text)  # one left-to-right pass: strings and comments never nest in each other
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def read_process(path: Path) -> Process:
    text = path.read_text()
    names = re.findall(r"^process\s+(\w+)\s*\{", text, re.M)
    if len(names) != 1:
        raise ValueError(f"{path}: expected exactly one process, found {names}")
    body = text[text.index("{") + 1 : text.rindex("}")]
    parts = SECTION.split(body)
    head, sections = parts[0], dict(zip(parts[1::2], parts[2::2], strict=True))
    directives = [line.split()[0] for line in head.strip().splitlines() if line.strip()]

    def lines(section: str) -> list[str]:
        return [line.strip() for line in sections.get(section, "").strip().splitlines() if line.strip()]

    def gstring(section: str) -> tuple[str, str]:
        block = sections[section]
        return block[: block.index('"""')], block[block.index('"""') + 3 : block.rindex('"""')]

    defs, script = gstring("script")
    _, stub = gstring("stub")
    return Process(names[0], directives, lines("input"), lines("output"), script, stub, defs)


def input_names(process: Process) -> list[str]:
    """Names bound by the input declarations, in order (``tuple val(meta), path(x)`` → meta, x)."""
    names = []
    for line in process.inputs:
        names += re.findall(r"(?:val|path)\(\s*(\w+)", line) or re.findall(r"^val\s+(\w+)", line)
    return names


def output_emits(process: Process) -> list[str]:
    return [m for line in process.outputs for m in re.findall(r"emit:\s*(\w+)", line)]


def render(template: str, values: dict[str, str]) -> str:
    """Interpolate ``${name}`` and ``$name`` (Groovy GString rules for plain identifiers)."""

    def lookup(match: re.Match) -> str:
        key = match.group(1) or match.group(2)
        if key not in values:
            raise KeyError(f"no test value for ${key}")
        return values[key]

    text = re.sub(r"\$\{([\w.]+)\}|\$([A-Za-z_]\w*)", lookup, template)
    return "\n".join(line.strip() for line in text.strip().splitlines())


def params_used(text: str) -> set[str]:
    return set(re.findall(r"params\.(\w+)", text))


def config_params(text: str) -> set[str]:
    block = text[text.index("params {") : text.index("}", text.index("params {"))]
    return set(re.findall(r"^\s+(\w+)\s*=", block, re.M))


# -- Nextflow's scoping rules -----------------------------------------------------
IMPLICIT = {"task", "params", "meta", "moduleDir", "projectDir", "workflow", "launchDir", "baseDir"}


def script_level_assignments(defs: str) -> tuple[set[str], set[str]]:
    """(names assigned without ``def``, names declared with ``def``) in a script block's Groovy preamble.

    Nextflow evaluates the ``script:`` closure before the ``output:`` declarations
    and makes the closure's *binding* visible to them: a plain ``prefix = ...``
    goes into the binding, a ``def prefix = ...`` is a local variable of the
    closure, gone by the time ``path("${prefix}.h5ad")`` is resolved. That is
    the nf-core pitfall every module fell into.
    """
    bound = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=(?!=)", defs, re.M))
    local = set(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*=", defs, re.M))
    return bound, local


def names_in(text: str) -> set[str]:
    """Root identifiers interpolated in GStrings: ``${prefix}.h5ad`` → prefix, ``$meta.id`` → meta."""
    found = set()
    for string in re.findall(r'"((?:\\.|[^"\\])*)"', text):
        found |= {m.split(".")[0] for m in re.findall(r"\$\{\s*([A-Za-z_][\w.]*)", string)}
        found |= set(re.findall(r"\$([A-Za-z_]\w*)", string))
    return found


def unbound_output_names(process: Process) -> list[str]:
    """Names the output declarations use that the engine cannot resolve there (empty when the module is right)."""
    bound, local = script_level_assignments(process.script_defs)
    allowed = set(input_names(process)) | IMPLICIT | bound
    used = set()
    for line in process.outputs:
        used |= names_in(line.split("topic:")[0] if "eval(" in line else line)
    return sorted(name for name in used if name not in allowed or (name in local and name not in bound))


def emits_used(main_text: str) -> set[tuple[str, str]]:
    """``(PROCESS, emit)`` pairs that a workflow reads as ``PROCESS.out.emit``."""
    return set(re.findall(r"\b([A-Z][A-Z0-9_]*)\.out\.(\w+)", main_text))


def include_aliases(main_text: str) -> dict[str, str]:
    """Alias (or name) → module path for every ``include { X [as Y] } from './path'``."""
    aliases = {}
    for name, alias, module in re.findall(r"include \{\s*(\w+)(?:\s+as\s+(\w+))?\s*\} from '\./(\S+)'", main_text):
        aliases[alias or name] = module
    return aliases


# -- nf-schema's samplesheet rules ------------------------------------------------
def check_samplesheet(csv_path: Path, schema: dict, launch_dir: Path) -> list[str]:
    """The errors nf-schema's ``samplesheetToList`` would raise for a CSV samplesheet (empty when it passes).

    Modelled: empty cells count as absent; ``required``; every JSON-schema keyword of a property (types,
    ``pattern``, ``enum``, through jsonschema); ``format: file-path`` files that must exist: with ``exists``,
    relative to the launch directory (as ``file()`` reads them); otherwise main.nf's rule (``samplePath``: the
    launch directory, then the samplesheet's own folder); nf-schema's own ``uniqueEntries``; columns the schema
    does not know.
    """
    import csv

    from jsonschema import Draft202012Validator

    item = schema["items"]
    known = set(item["properties"])
    errors = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        unknown = set(reader.fieldnames or []) - known
        if unknown:
            errors.append(f"unknown columns: {', '.join(sorted(unknown))}")
        rows = [{k: v.strip() for k, v in row.items() if k in known and v and v.strip()} for row in reader]
    validator = Draft202012Validator({k: v for k, v in item.items() if k != "properties"} |
                                     {"properties": {name: {k: v for k, v in spec.items()
                                                            if k not in ("meta", "exists", "errorMessage", "format")}
                                                     for name, spec in item["properties"].items()}})
    for number, row in enumerate(rows, start=1):
        errors += [f"row {number}: {e.message}" for e in validator.iter_errors(row)]
        for name, spec in item["properties"].items():
            if name in row and spec.get("format") == "file-path":
                places = [Path(row[name])] if Path(row[name]).is_absolute() else \
                    [launch_dir / row[name]] + ([] if spec.get("exists") else [csv_path.parent / row[name]])
                if not any(path.is_file() for path in places):
                    errors.append(f"row {number}: {name} {row[name]} does not exist")
    for columns in [schema.get("uniqueEntries", [])] if schema.get("uniqueEntries") else []:
        keys = [tuple(row.get(c) for c in columns) for row in rows]
        if len(set(keys)) != len(keys):
            errors.append(f"entries of {', '.join(columns)} are not unique")
    return errors


def include_configs(config_text: str) -> list[str]:
    """The files a config pulls in with ``includeConfig 'path'``."""
    return re.findall(r"includeConfig\s+'([^']+)'", config_text)
