import textwrap

import pandas as pd
import pytest

from cellpix.core.hierarchy import Hierarchy, check_ontology, resolve_hierarchy
from cellpix.errors import HierarchyError

SHARED_TSV = "immune-hierarchy-schdeepinsight.tsv"


def write(tmp_path, text):
    path = tmp_path / "h.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_immune_matches_published_table(tmp_path):
    from conftest import SHARED, require

    table = pd.read_csv(require(SHARED.parent / "docs" / SHARED_TSV), sep="\t")
    tree = resolve_hierarchy("immune-schdeepinsight")
    assert len(tree.bases) == 15 and tree.n_subtypes() == 50
    assert tree.base_names == list(dict.fromkeys(table["base_type"]))
    assert tree.labels == table["subtype"].tolist()
    terminal = sorted(b.name for b in tree.bases if b.is_terminal)
    assert terminal == ["Erythrocyte", "MAIT", "Megakaryocytes/platelets"]
    assert check_ontology(tree) == []


def test_pbmc_sorted_covers_zheng_and_pbmc68k_labels(zheng_raw):
    import scanpy as sc

    tree = resolve_hierarchy("pbmc-sorted")
    assert set(zheng_raw.obs["cell_type"].astype(str)) <= set(tree.labels)
    assert set(zheng_raw.obs["lineage"].astype(str)) <= set(tree.base_names)
    l2b = tree.label_to_base
    pairs = set(zip(zheng_raw.obs["cell_type"].astype(str), zheng_raw.obs["lineage"].astype(str), strict=True))
    assert all(l2b[sub] == base for sub, base in pairs)
    assert set(sc.datasets.pbmc68k_reduced().obs["bulk_labels"].astype(str)) <= set(tree.labels)
    assert check_ontology(tree) == []


def test_yaml_round_trip(tmp_path):
    tree = resolve_hierarchy("immune-schdeepinsight")
    path = tmp_path / "again.yaml"
    path.write_text(tree.to_yaml())
    again = Hierarchy.from_yaml(path)
    assert again.labels == tree.labels and again.ontology_ids() == tree.ontology_ids()


def test_flat_form_and_from_obs(tmp_path, zheng_raw):
    flat = Hierarchy.from_yaml(write(tmp_path, """
        name: flat
        nodes:
          - {name: T}
          - {name: CD4, parent: T}
          - {name: CD8, parent: T}
          - {name: Mast}
    """))
    assert flat.labels == ["CD4", "CD8", "Mast"] and flat.base("Mast").is_terminal
    derived = Hierarchy.from_obs(zheng_raw.obs, "lineage", "cell_type")
    assert len(derived.bases) == 5 and derived.n_subtypes() == 10
    assert len(derived.base("T cell").subtypes) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nnodes:\n  - {name: A}\n  - {name: B, parent: Nope}\n", "orphan subtype 'B'"),
        ("name: x\nnodes:\n  - {name: A, parent: B}\n  - {name: B, parent: A}\n", "cycle"),
        ("name: x\ncell_types:\n  - {name: A, subtypes: [X]}\n  - {name: B, subtypes: [X]}\n",
         "duplicate cell type 'X'"),
        ("name: x\ncell_types:\n  - {name: A, ontology_id: 'CL:12'}\n", "expected a Cell Ontology ID"),
        ("name: x\nnodes:\n  - {name: A}\n  - {name: B, parent: A}\n  - {name: C, parent: B}\n",
         "levels deep"),
        ("name: x\ncell_types: [\n", "not valid YAML"),
        ("just a string\n", "must be a mapping"),
    ],
)
def test_broken_hierarchies_are_rejected(tmp_path, text, message):
    with pytest.raises(HierarchyError, match=message):
        Hierarchy.from_yaml(write(tmp_path, text))


def test_ontology_check_finds_wrong_parent(tmp_path):
    tree = Hierarchy.from_yaml(write(tmp_path, """
        name: wrong
        cell_types:
          - name: B cell
            ontology_id: CL:0000236
            subtypes:
              - {name: NK, ontology_id: CL:0000623}
              - {name: naive B, ontology_id: CL:0000788}
    """))
    problems = check_ontology(tree)
    assert len(problems) == 1 and "NK (CL:0000623) is not a descendant" in problems[0]


def test_restricted_to_prunes_labels():
    tree = resolve_hierarchy("pbmc-sorted").restricted_to(["CD19+ B", "CD4+/CD25 T Reg", "CD8+ Cytotoxic T"])
    assert tree.base_names == ["T cell", "B cell"]
    assert tree.labels == ["CD4+/CD25 T Reg", "CD8+ Cytotoxic T", "CD19+ B"]
