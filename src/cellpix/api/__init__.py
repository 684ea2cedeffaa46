"""The public Python API: ``import cellpix as cx``, AnnData in and AnnData (or a model) out.

Each function is the step the command line runs, without files in between::

    import cellpix as cx

    reference = cx.integrate(raw_reference, genes_from=[query])      # QC, normalisation, the panel
    layout = cx.fit_layout(reference, groupby="cell_type")            # genes on a pixel grid
    model = cx.train(reference, layout, cx.hierarchy("pbmc-sorted"), "cell_type")
    annotated = cx.annotate(query, model)                             # obs / obsm / uns['cellpix']
    proba = cx.probabilities(annotated)                               # cells × subtypes, named columns
    genes = cx.explain(annotated, model)                              # SHAP gene ranking per class
    model.save("pbmc.cellpix"); model = cx.load_model("pbmc.cellpix")

The command line, the Galaxy tools and the Nextflow modules call the same code: these functions, and the
file-level operations of :mod:`cellpix.api.files` (each step from paths to paths, and what a front door needs
around them), which are the only way the command line and the pipeline reach the steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy modules load when a function is first called, not on ``import cellpix``
    import anndata as ad
    import pandas as pd

    from cellpix.core.hierarchy import Hierarchy
    from cellpix.core.layout import GeneLayout
    from cellpix.core.trained import TrainedModel
    from cellpix.steps.annotate.options import AnnotateOptions
    from cellpix.steps.explain.options import ExplainOptions
    from cellpix.steps.explain.shap_genes import Explanation
    from cellpix.steps.integrate.options import QCOptions
    from cellpix.steps.train.config import TrainConfig


def integrate(adata: ad.AnnData, options: QCOptions | None = None, *, genes_from: Sequence[ad.AnnData] = (),
              layer: str | None = None, use_raw: bool | None = None) -> ad.AnnData:
    """Prepare a labelled reference: QC, log1p(counts per 10,000) and the gene panel.

    Parameters
    ----------
    adata
        The reference: raw counts (in X, a ``counts`` layer or ``.raw``) or log-normalised values.
    options
        QC and panel options (:class:`cellpix.steps.integrate.options.QCOptions`: minimum genes and cells, the
        mitochondrial cut, the panel size and gene ranking).
    genes_from
        The queries the model is for. The panel is chosen among the genes every one of them has, so none
        misses part of it; QC and normalisation still use all of the reference's genes.
    layer, use_raw
        Where the expression is (found automatically by default).

    Returns
    -------
    AnnData
        A new object on the panel: X = log1p(CP10k); ``obs['cellpix_n_genes']``, ``obs['cellpix_mito_fraction']``;
        ``var['gene_symbol']``; ``uns['cellpix_integrate']`` (what QC removed, the normalisation, the queries the
        panel was chosen for, and warnings).
    """
    from cellpix.steps.integrate.reference import prepare_reference, query_gene_table

    tables = [query_gene_table(query) for query in genes_from]
    return prepare_reference(adata, options, layer=layer, use_raw=use_raw, genes_from=tables)


def fit_layout(reference: ad.AnnData, *, preset: str | None = None, groupby: str | None = None,
               pixels: int | None = None, **options: Any) -> GeneLayout:
    """Place the panel's genes on a pixel grid, as the model to be trained needs them.

    Parameters
    ----------
    reference
        The output of :func:`integrate` (its ``var_names`` are the panel).
    preset
        The training preset the layout is for (:data:`cellpix.core.layout.LAYOUT_PRESETS`; by default
        the cpu preset's). ``"cpu"``: genes in panel order, instantly, because the per-pixel read-out gives every
        pixel its own weights and cannot use where a gene sits. ``"trunk"``: t-SNE of the genes, then one gene
        per pixel by assignment, which a convolutional trunk reads. ``"paper"``: the published 224-px t-SNE layout.
    groupby
        obs column to stratify the cells the manifold is fitted on.
    pixels
        Grid side; by default the smallest square that gives every gene its own pixel.
    **options
        Passed to :func:`cellpix.steps.imaging.layout.fit_layout` (``method``, ``max_cells``, ``discretization``,
        ``random_state``, ``pseudo_count``, the manifold's own parameters such as ``perplexity``); they win over
        the preset's.

    Returns
    -------
    GeneLayout
        Gene → pixel coordinates, the pixel values' pseudo-count and the per-gene min-max scaling;
        ``.save(path)`` writes it as JSON.
    """
    from cellpix.data.genes import find_symbol_column
    from cellpix.steps.imaging.layout import DEFAULT_LAYOUT_PRESET
    from cellpix.steps.imaging.layout import fit_layout as fit

    options.setdefault("symbol_column", find_symbol_column(reference.var))
    return fit(reference, preset=preset or DEFAULT_LAYOUT_PRESET, groupby=groupby, pixels=pixels, **options)


def train(reference: ad.AnnData, layout: GeneLayout, hierarchy: Hierarchy | str, label_key: str,
          config: TrainConfig | None = None, *, progress: bool = True, report_dir: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          reference_name: str = "") -> TrainedModel:
    """Train the hierarchical classifier (base-type head, one subtype head per branching base, AHFL).

    Parameters
    ----------
    reference
        The output of :func:`integrate`, with the labels in ``obs[label_key]``.
    layout
        The output of :func:`fit_layout`.
    hierarchy
        A :class:`Hierarchy` or the name of a registered one (see :func:`hierarchy`).
    label_key
        obs column of the final (subtype) labels.
    config
        Training options (:class:`cellpix.steps.train.config.TrainConfig`; ``TrainConfig.from_preset("paper")`` is the
        published configuration).
    progress
        Show a progress bar.
    report_dir
        Folder for the training report (per-epoch metrics and their plots); none by default.
    checkpoint_dir, resume
        Folder for per-epoch checkpoints, and whether to resume from the last one there.
    reference_name
        The reference's file name, recorded in the bundle's metadata.

    Returns
    -------
    TrainedModel
        The network, its layout and hierarchy, and the metadata a bundle carries (validation scores, novelty
        thresholds, the reference's expression profile). Raises
        :class:`cellpix.errors.TrainingFailedError` rather than return a model that stayed at chance.
    """
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.train.trainer import train as fit

    tree = resolve_hierarchy(hierarchy) if isinstance(hierarchy, str) else hierarchy
    return fit(reference, layout, tree, label_key, config, checkpoint_dir=checkpoint_dir, resume=resume,
               report_dir=report_dir, progress=progress, reference_name=reference_name)


def annotate(query: ad.AnnData, model: TrainedModel | Sequence[TrainedModel] | str | Path,
             options: AnnotateOptions | None = None, *, copy: bool = True,
             key_added: str | None = None) -> ad.AnnData | None:
    """Annotate a query with base types, subtypes, confidences and novelty flags.

    Parameters
    ----------
    query
        Raw counts, log-normalised values, or scaled X with the counts in ``.raw``; Ensembl IDs or symbols.
    model
        A trained model, several trained on the same hierarchy (an ensemble: probabilities are averaged), or
        the path of a bundle.
    options
        :class:`cellpix.steps.annotate.options.AnnotateOptions` (gene matching, coverage, novelty rule, device).
    copy
        Return an annotated copy (the default, as before), or with ``False`` add the entries to ``query`` itself
        and return None, as scanpy's tools do; nothing is written into ``query`` until every answer is computed.
    key_added
        The name every key below is written under instead of ``cellpix`` (the default, None), as scanpy's
        ``key_added``: ``'pbmc'`` writes
        ``obs['pbmc_label']``, ``obsm['pbmc_subtype_proba']``, ``obsm['X_pbmc_pca']`` and ``uns['pbmc']``, so that
        two models' annotations sit side by side. An earlier annotation's obs columns under the same name are
        replaced, none left stale. The command line and the files it writes always use ``cellpix``.

    Returns
    -------
    AnnData or None
        A copy of ``query`` (or, with ``copy=False``, None and ``query`` itself) with ``obs['cellpix_base']``,
        ``obs['cellpix_subtype']`` (``unassigned`` for cells without expression on the model's genes, reason in
        ``obs['cellpix_unassigned']``),
        ``obs['cellpix_base_probability']``, ``obs['cellpix_subtype_probability']``,
        ``obs['cellpix_novelty_score']``, ``obs['cellpix_is_novel']`` with its reason in
        ``obs['cellpix_novelty_reason']`` (``subtype``, ``out_of_reference`` or both),
        ``obs['cellpix_reference_distance']`` (distance to the nearest reference cells in expression space),
        ``obs['cellpix_uncertainty']``, ``obs['cellpix_out_of_reference']``, the shift guards' per-cell
        statistics ``obs['cellpix_panel_detected']`` (share of the model's genes detected) and
        ``obs['cellpix_panel_mean_nonzero']`` (mean non-zero log1p CP10k value on them), and, where the hierarchy
        has Cell Ontology IDs, ``obs['cellpix_base_ontology_id']`` and ``obs['cellpix_subtype_ontology_id']``;
        with the consensus (the default), the cluster columns ``obs['cellpix_cluster']``,
        ``['cellpix_consensus_base']``, ``['cellpix_consensus_subtype']``, ``['cellpix_consensus_agreement']``,
        ``['cellpix_cluster_novelty']`` (the cluster's novelty score, past 2.0 exactly where the cluster is
        flagged), the answer to read ``obs['cellpix_label']`` and
        ``obsm['X_cellpix_pca']``; ``obsm['cellpix_base_proba']`` and ``obsm['cellpix_subtype_proba']``
        (columns in ``uns['cellpix']['base_types']`` and ``['subtypes']`` order); ``uns['cellpix']``: models,
        gene matching, novelty rule and ``novelty_thresholds`` (per subtype, as parallel arrays), the distance
        threshold and the one applied to this query (``reference_distance``), the shift comparison (``shift``),
        the reference's shift profile and label shares, ``clusters`` (the per-cluster evidence) and
        ``warnings``. Every label-keyed record is stored as parallel arrays, so any label survives the file.
    """
    from cellpix.steps.annotate.annotate import annotate_adata

    given = list(model) if isinstance(model, Sequence) and not isinstance(model, str) else [model]
    models = [load_model(m) if isinstance(m, (str, Path)) else m for m in given]
    annotated = annotate_adata(query, models, options, copy=copy, key_added=key_added)
    return annotated if copy else None


def probabilities(adata: ad.AnnData, level: str = "subtype", *, key: str | None = None) -> pd.DataFrame:
    """The probabilities :func:`annotate` wrote, as a DataFrame with one named column per class.

    Parameters
    ----------
    adata
        An annotated AnnData (in memory or read back from ``cellpix annotate``'s h5ad).
    level
        ``'subtype'`` (``obsm['cellpix_subtype_proba']``, every final label) or ``'base'``
        (``obsm['cellpix_base_proba']``).
    key
        The ``key_added`` the data were annotated under (None: ``cellpix``).

    Returns
    -------
    DataFrame
        Cells (``adata.obs_names``) × classes, named from ``uns['cellpix']['subtypes']`` or ``['base_types']``.
        The obsm entries stay bare arrays because cell-type names hold slashes, which h5ad keys are losing.
    """
    from cellpix.steps.annotate.results import probability_frame

    return probability_frame(adata, level, key)


def explain(adata: ad.AnnData, model: TrainedModel | str | Path, options: ExplainOptions | None = None, *,
            label_key: str | None = None) -> Explanation:
    """SHAP gene importance for every base type and subtype (expected gradients through the network).

    Parameters
    ----------
    adata
        Cells to explain: a query, annotated or not, or the reference.
    model
        The trained model or its bundle's path.
    options
        :class:`cellpix.steps.explain.options.ExplainOptions` (levels, cells per class, samples, background; the
        gene column, layer, ``.raw`` and minimum gene coverage the data are read with).
    label_key
        obs column of true labels to group cells by; without it, cells are grouped by the model's call.

    Returns
    -------
    Explanation
        ``.table``: one row per (level, class, gene) with ``mean_abs_shap``, ``mean_shap`` and the rank;
        ``.top(level, name, n)`` the top genes of a class. ``adata`` is not changed.
    """
    from dataclasses import replace

    from cellpix.steps.explain.options import ExplainOptions as Options
    from cellpix.steps.explain.step import explain_adata

    trained = load_model(model) if isinstance(model, (str, Path)) else model
    options = replace(options or Options(), label_key=label_key or (options.label_key if options else None))
    return explain_adata(adata, trained, options)


def load_model(path: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a ``.cellpix`` bundle by path, or a ready-made model by name (``cellpix models list``).

    A name is fetched into the model cache on first use and verified against its published sha256; every
    bundle's own checksum is verified as it loads.
    """
    from cellpix.core.models import resolve
    from cellpix.core.trained import TrainedModel as Loaded

    return Loaded.load(resolve(path), device=device)


def hierarchy(name_or_path: str) -> Hierarchy:
    """A registered hierarchy by name (``cellpix hierarchies list``) or one read from a YAML file."""
    from cellpix.core.hierarchy import resolve_hierarchy as resolve

    return resolve(name_or_path)
