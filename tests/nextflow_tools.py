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
