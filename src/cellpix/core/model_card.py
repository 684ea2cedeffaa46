"""The model card: what a user reads before trusting a bundle on their cells.

Half of a card is already in every bundle: the labels and their Cell Ontology IDs, the gene panel and its
species, the validation scores, the versions. The other half only the model's author knows: where the
training data came from, the cross-validation and cross-dataset figures, the licence. An author passes that
half to :func:`with_card` before saving; :func:`model_card` joins both for ``cellpix inspect`` and
``cellpix models show``, so a bundle a user trained themselves has a card too, saying what is not stated.
"""

from __future__ import annotations

from typing import Any

from cellpix.core.hierarchy import Hierarchy
from cellpix.errors import CellpixError

NOT_STATED = "not stated by the model's author"
AUTHOR_FIELDS = ("title", "training_data", "provenance", "figures", "licence", "intended_use", "limitations")


def _species(symbols: list[str]) -> str:
    """Human symbols are upper case, mouse and rat ones capitalised (``data.genes`` uses the same rule)."""
    from cellpix.data.genes import capitalised_share

    share = capitalised_share(symbols)
    return "Homo sapiens" if share < 0.3 else "Mus musculus or another rodent" if share > 0.7 else "unclear"


def _labels(hierarchy: Hierarchy) -> list[dict[str, Any]]:
    rows = []
    for base in hierarchy.bases:
        rows.append({"name": base.name, "level": "base", "ontology_id": base.ontology_id})
        rows.extend({"name": sub.name, "level": "subtype", "base": base.name, "ontology_id": sub.ontology_id}
                    for sub in base.subtypes)
    return rows


def derived_card(metadata: dict[str, Any]) -> dict[str, Any]:
    """The card fields a bundle's own metadata answers."""
    from cellpix.core.bundle import BUNDLE_SCHEMA

    training = metadata.get("training", {})
    layout = metadata.get("layout", {})
    symbols = layout.get("symbols") or layout.get("genes") or []
    return {
        "labels": _labels(Hierarchy.from_dict(metadata["hierarchy"])),
        "gene_panel": {"genes": len(layout.get("genes", [])), "species": _species([str(s) for s in symbols]),
                       "first_genes": [str(s) for s in symbols[:10]]},
        "training_data": {"reference": training.get("reference") or NOT_STATED, "cells": training.get("n_cells"),
                          "label_key": training.get("label_key")},
        "figures": {"validation_split": training.get("validation_metrics", {})},
        "licence": NOT_STATED,
        "cellpix_version": metadata.get("cellpix_version", ""),
        "bundle_schema": BUNDLE_SCHEMA,
    }


def model_card(metadata: dict[str, Any]) -> dict[str, Any]:
    """The whole card: the bundle's own facts, completed and overridden by what its author wrote."""
    card = derived_card(metadata)
    for key, value in (metadata.get("card") or {}).items():
        card[key] = {**card[key], **value} if isinstance(card.get(key), dict) and isinstance(value, dict) else value
    return card


def with_card(metadata: dict[str, Any], **author: Any) -> dict[str, Any]:
    """Metadata carrying the author's half of the card (only :data:`AUTHOR_FIELDS`; the rest is derived)."""
    unknown = sorted(set(author) - set(AUTHOR_FIELDS))
    if unknown:
        raise CellpixError(f"model card fields {unknown} are derived from the bundle or unknown; "
                         f"an author sets {', '.join(AUTHOR_FIELDS)}")
    return {**metadata, "card": {**(metadata.get("card") or {}), **author}}


def render_card(card: dict[str, Any]) -> list[str]:
    """The card as text lines: labels with their Cell Ontology IDs one per line, other sections as key: value."""
    lines = []
    for key, value in card.items():
        if key == "labels":
            lines.append(f"labels ({len(value)}):")
            lines.extend(f"  {'  ' if row['level'] == 'subtype' else ''}{row['name']}"
                         f" [{row.get('ontology_id') or 'no ontology ID'}]" for row in value)
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {_flat(v)}" for k, v in value.items())
        else:
            lines.append(f"{key}: {_flat(value)}")
    return lines


def _flat(value: Any) -> str:
    import json

    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
