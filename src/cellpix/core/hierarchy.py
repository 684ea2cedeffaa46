"""Two-level cell-type hierarchies: base types and their subtypes.

A *terminal leaf* is a base type that needs no subtype classifier: it has no
subtypes, or exactly one (often equal to itself, as MAIT in the published
immune hierarchy). Its final label is that single subtype, or the base name.

Hierarchies are read from YAML in either of two shapes:

* nested, which is easiest to write::

    name: my-tissue
    cell_types:
      - name: T cell
        ontology_id: CL:0000084
        subtypes:
          - {name: CD4 T, ontology_id: CL:0000624}
          - {name: CD8 T}
      - {name: Mast}

* flat, one node per line with its parent, which is what tables export::

    name: my-tissue
    nodes:
      - {name: T cell}
      - {name: CD4 T, parent: T cell}

Validation rejects duplicate names, subtypes whose parent does not exist
(orphans), cycles and trees deeper than two levels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cellpix.data.yaml_text import read_yaml
from cellpix.errors import CellpixError, HierarchyError

CL_ID = re.compile(r"^CL:\d{7}$")


@dataclass(frozen=True)
class CellType:
    """One node: a display name and, when a clear term exists, a Cell Ontology ID."""

    name: str
    ontology_id: str | None = None


@dataclass(frozen=True)
class BaseType:
    """A base (major) type and its subtypes."""

    name: str
    ontology_id: str | None = None
    subtypes: tuple[CellType, ...] = ()

    @property
    def is_terminal(self) -> bool:
        """True when no subtype classifier is needed (zero or one subtype)."""
        return len(self.subtypes) <= 1

    @property
    def labels(self) -> tuple[str, ...]:
        """The final (subtype-level) labels this base type can produce."""
        return tuple(s.name for s in self.subtypes) if self.subtypes else (self.name,)


@dataclass
class Hierarchy:
    """An ordered two-level hierarchy; the order fixes the model's output columns."""

    name: str
    bases: tuple[BaseType, ...]
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self.bases = tuple(self.bases)
        validate_bases(self.bases, self.name)

    # -- lookups -----------------------------------------------------------
    @property
    def base_names(self) -> list[str]:
        return [b.name for b in self.bases]

    @property
    def labels(self) -> list[str]:
        """All final labels, in base order: the columns of the subtype probability matrix."""
        return [label for b in self.bases for label in b.labels]

    @property
    def label_to_base(self) -> dict[str, str]:
        return {label: b.name for b in self.bases for label in b.labels}

    @property
    def branching_bases(self) -> list[BaseType]:
        """Base types that get a subtype head (two or more subtypes)."""
        return [b for b in self.bases if not b.is_terminal]

    def base(self, name: str) -> BaseType:
        for b in self.bases:
            if b.name == name:
                return b
        raise HierarchyError(f"hierarchy {self.name!r} has no base type {name!r}")

    def ontology_ids(self) -> dict[str, str]:
        """``{node name: CL ID}`` for every node that has one."""
        ids = {b.name: b.ontology_id for b in self.bases if b.ontology_id}
        ids.update({s.name: s.ontology_id for b in self.bases for s in b.subtypes if s.ontology_id})
        return ids

    def n_subtypes(self) -> int:
        return sum(len(b.subtypes) for b in self.bases)

    def restricted_to(self, labels: Iterable[str]) -> Hierarchy:
        """The sub-hierarchy keeping only the given final labels (and bases that still have one).

        Training prunes the hierarchy to the labels its reference contains, so
        a large hierarchy can be used with a reference that covers part of it.
        """
        keep = set(labels)
        bases = []
        for b in self.bases:
            if b.subtypes:
                subs = tuple(s for s in b.subtypes if s.name in keep)
                if subs:
                    bases.append(BaseType(b.name, b.ontology_id, subs))
            elif b.name in keep:
                bases.append(b)
        if not bases:
            raise HierarchyError(f"none of the labels match hierarchy {self.name!r}")
        return Hierarchy(self.name, tuple(bases), self.description, self.source)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def node(n: CellType | BaseType) -> dict[str, Any]:
            d: dict[str, Any] = {"name": n.name}
            if n.ontology_id:
                d["ontology_id"] = n.ontology_id
            return d

        cell_types = []
        for b in self.bases:
            d = node(b)
            if b.subtypes:
                d["subtypes"] = [node(s) for s in b.subtypes]
            cell_types.append(d)
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.source:
            out["source"] = self.source
        out["cell_types"] = cell_types
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, data: Any, default_name: str = "custom") -> Hierarchy:
        if not isinstance(data, dict):
            raise HierarchyError("a hierarchy must be a mapping with 'cell_types' or 'nodes'")
        name = str(data.get("name") or default_name)
        if "cell_types" in data:
            bases = _bases_from_nested(data["cell_types"], name)
        elif "nodes" in data:
            bases = _bases_from_flat(data["nodes"], name)
        else:
            raise HierarchyError(f"hierarchy {name!r}: needs a 'cell_types' (nested) or 'nodes' (flat) list")
        return cls(name, bases, str(data.get("description", "")), str(data.get("source", "")))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Hierarchy:
        path = Path(path)
        data = read_yaml(path, "a hierarchy", HierarchyError)
        try:
            return cls.from_dict(data, default_name=path.stem)
        except HierarchyError as exc:
            raise HierarchyError(f"{path}: {exc}") from exc

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[str, str]], name: str, ontology_ids: dict[str, str] | None = None
    ) -> Hierarchy:
        """Build from (base, subtype) pairs, in first-seen order (e.g. a two-column table)."""
        ids = ontology_ids or {}
        order: dict[str, list[str]] = {}
        for base, sub in pairs:
            subs = order.setdefault(str(base), [])
            if str(sub) not in subs:
                subs.append(str(sub))
        bases = []
        for base, subs in order.items():
            if subs == [base]:  # published terminal leaf: a single subtype equal to itself
                subtypes: tuple[CellType, ...] = (CellType(base, ids.get(base)),)
            else:
                subtypes = tuple(CellType(s, ids.get(s)) for s in subs)
            bases.append(BaseType(base, ids.get(base), subtypes))
        return cls(name, tuple(bases))

    @classmethod
    def from_obs(cls, obs: pd.DataFrame, base_key: str, subtype_key: str, name: str = "from-obs") -> Hierarchy:
        """Derive a hierarchy from two label columns of a reference (how users train on their own data)."""
        for key in (base_key, subtype_key):
            if key not in obs.columns:
                raise HierarchyError(f"obs has no column {key!r}; columns: {', '.join(map(str, obs.columns))}")
        frame = obs[[base_key, subtype_key]].dropna().astype(str)
        if frame.empty:
            raise HierarchyError(f"obs columns {base_key!r}/{subtype_key!r} hold no labels")
        parents = frame.groupby(subtype_key, observed=True)[base_key].nunique()
        ambiguous = sorted(parents[parents > 1].index)
        if ambiguous:
            raise HierarchyError(
                f"subtypes with more than one base type in obs: {', '.join(ambiguous[:10])}; "
                "each subtype must sit under exactly one base"
            )
        pairs = sorted(set(map(tuple, frame.to_numpy())))
        return cls.from_pairs(pairs, name)


def _node(entry: Any, where: str) -> CellType:
    if isinstance(entry, str):
        return CellType(entry)
    if not isinstance(entry, dict) or "name" not in entry:
        raise HierarchyError(f"{where}: each cell type needs a 'name' (got {entry!r})")
    oid = entry.get("ontology_id")
    return CellType(str(entry["name"]), str(oid) if oid else None)


def _bases_from_nested(entries: Any, name: str) -> tuple[BaseType, ...]:
    if not isinstance(entries, list) or not entries:
        raise HierarchyError(f"hierarchy {name!r}: 'cell_types' must be a non-empty list")
    bases = []
    for entry in entries:
        top = _node(entry, f"hierarchy {name!r}")
        raw_subs = entry.get("subtypes", []) if isinstance(entry, dict) else []
        if not isinstance(raw_subs, list):
            raise HierarchyError(f"hierarchy {name!r}: subtypes of {top.name!r} must be a list")
        subs = []
        for s in raw_subs:
            if isinstance(s, dict) and s.get("subtypes"):
                raise HierarchyError(
                    f"hierarchy {name!r}: {s.get('name')!r} under {top.name!r} has its own subtypes; "
                    "cellpix hierarchies have two levels (base type → subtype)"
                )
            subs.append(_node(s, f"hierarchy {name!r}, base {top.name!r}"))
        bases.append(BaseType(top.name, top.ontology_id, tuple(subs)))
    return tuple(bases)


def _bases_from_flat(entries: Any, name: str) -> tuple[BaseType, ...]:
    if not isinstance(entries, list) or not entries:
        raise HierarchyError(f"hierarchy {name!r}: 'nodes' must be a non-empty list")
    parent_of: dict[str, str | None] = {}
    nodes: dict[str, CellType] = {}
    for entry in entries:
        node = _node(entry, f"hierarchy {name!r}")
        if node.name in nodes:
            raise HierarchyError(f"hierarchy {name!r}: duplicate cell type {node.name!r}")
        nodes[node.name] = node
        parent = entry.get("parent") if isinstance(entry, dict) else None
        parent_of[node.name] = str(parent) if parent else None
    for child, parent in parent_of.items():
        if parent is not None and parent not in nodes:
            raise HierarchyError(f"hierarchy {name!r}: orphan subtype {child!r}: parent {parent!r} is not defined")
    for start in parent_of:
        seen = [start]
        current = parent_of[start]
        while current is not None:
            if current in seen:
                cycle = " → ".join([*seen, current])
                raise HierarchyError(f"hierarchy {name!r}: cycle in parents: {cycle}")
            seen.append(current)
            current = parent_of[current]
        if len(seen) > 2:
            raise HierarchyError(
                f"hierarchy {name!r}: {start!r} is {len(seen) - 1} levels deep; "
                "cellpix hierarchies have two levels (base type → subtype)"
            )
    bases = []
    for base_name, parent in parent_of.items():
        if parent is None:
            subs = tuple(nodes[c] for c, p in parent_of.items() if p == base_name)
            bases.append(BaseType(base_name, nodes[base_name].ontology_id, subs))
    return tuple(bases)


def validate_bases(bases: Sequence[BaseType], name: str) -> None:
    """Reject empty hierarchies, duplicate names and malformed ontology IDs."""
    if not bases:
        raise HierarchyError(f"hierarchy {name!r} has no cell types")
    seen: dict[str, str] = {}
    for b in bases:
        if not b.name.strip():
            raise HierarchyError(f"hierarchy {name!r}: a base type has an empty name")
        if b.name in seen:
            raise HierarchyError(f"hierarchy {name!r}: duplicate cell type {b.name!r}")
        seen[b.name] = "base"
    for b in bases:
        sub_names = [s.name for s in b.subtypes]
        for s in b.subtypes:
            if not s.name.strip():
                raise HierarchyError(f"hierarchy {name!r}: a subtype of {b.name!r} has an empty name")
            # A subtype may repeat its own base's name (the published MAIT leaf, or
            # "Macrophage" beside "Macrophage_inflammatory"); any other repeat is ambiguous.
            if sub_names.count(s.name) > 1 or (s.name in seen and s.name != b.name):
                raise HierarchyError(f"hierarchy {name!r}: duplicate cell type {s.name!r}")
            seen[s.name] = b.name
    for node in [*bases, *(s for b in bases for s in b.subtypes)]:
        if node.ontology_id and not CL_ID.match(node.ontology_id):
            raise HierarchyError(
                f"hierarchy {name!r}: {node.name!r} has ontology_id {node.ontology_id!r}; "
                "expected a Cell Ontology ID like CL:0000236"
            )


def check_ontology(h: Hierarchy) -> list[str]:
    """Check every CL ID against the Cell Ontology shipped offline by cellxgene-ontology-guide.

    Returns problems as readable lines (unknown or obsolete terms, and subtypes
    whose term is not a descendant of their base type's term); empty when all is well.
    """
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    parser = OntologyParser()
    problems = []
    valid: dict[str, bool] = {}
    for node_name, oid in h.ontology_ids().items():
        ok = parser.is_valid_term_id(oid)
        valid[oid] = ok
        if not ok:
            problems.append(f"{node_name}: {oid} is not a Cell Ontology term")
        elif parser.is_term_deprecated(oid):
            problems.append(f"{node_name}: {oid} is obsolete in the Cell Ontology")
    for b in h.bases:
        if not b.ontology_id or not valid.get(b.ontology_id):
            continue
        for s in b.subtypes:
            if s.ontology_id and valid.get(s.ontology_id) and s.ontology_id != b.ontology_id:
                ancestors = set(parser.get_term_ancestors(s.ontology_id))
                if b.ontology_id not in ancestors:
                    problems.append(
                        f"{s.name} ({s.ontology_id}) is not a descendant of its base "
                        f"{b.name} ({b.ontology_id}) in the Cell Ontology"
                    )
    return problems


def resolve_hierarchy(spec: str) -> Hierarchy:
    """A registered hierarchy name, or a path to a YAML file."""
    from cellpix import plugins  # the registry loads the plugins; only a name needs it

    path = Path(spec)
    if path.suffix.lower() in {".yaml", ".yml"} or path.is_file():
        return Hierarchy.from_yaml(path)
    return plugins.resolve_lazy(plugins.lookup("hierarchies", spec, "hierarchy"))


def hierarchy_for_training(obs: pd.DataFrame, label_key: str, name: str | None = None,
                           from_obs: str | None = None, reference_name: str = "reference") -> Hierarchy:
    """The hierarchy a training run uses: exactly one of a registered name or YAML path (``name``), or obs columns.

    Parameters
    ----------
    obs
        The reference's cell metadata.
    label_key
        obs column of the subtype labels; the subtype column when ``from_obs`` names only the base column.
    name
        A registered hierarchy or a YAML file (:func:`resolve_hierarchy`).
    from_obs
        ``BASE`` or ``BASE:SUBTYPE`` obs columns to read the tree from (:meth:`Hierarchy.from_obs`), for a
        reference whose types no registered hierarchy names.
    reference_name
        Names the tree read from obs (``{reference_name}-obs``), so a bundle says where it came from.
    """
    if bool(name) == bool(from_obs):
        raise CellpixError("give exactly one of --hierarchy or --hierarchy-from-obs")
    if from_obs:
        base_col, _, sub_col = from_obs.partition(":")
        if base_col == (sub_col or label_key):
            raise CellpixError(f"--hierarchy-from-obs {from_obs!r} names obs column {base_col!r} for both levels; "
                               "give BASE_COL:SUBTYPE_COL with two different columns (or --hierarchy)")
        return Hierarchy.from_obs(obs, base_col, sub_col or label_key, name=f"{reference_name}-obs")
    return resolve_hierarchy(str(name))
