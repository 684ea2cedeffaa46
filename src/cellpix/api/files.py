"""The file-level API: each step from paths to paths, and what a front door needs around them.

The command line (:mod:`cellpix.cli`) and the pipeline (:mod:`cellpix.pipeline`) reach the steps, the core and the
data layer through this module and :mod:`cellpix.api` only (``tests/test_layers.py`` holds them to it), so a step
can be reorganised inside without touching a front door, and what the front doors use is listed in one place.
The Galaxy tools and the Nextflow modules run the command line.

Each name is imported from the module that defines it when first asked for (as ``import cellpix`` does), so a
command pays only for the modules it uses: ``cellpix --help`` loads neither the annotation stream nor torch.

- Annotation: :func:`annotate_file` (stream a query h5ad to an annotated h5ad), :func:`consensus_file` (add the
  cluster consensus to a query annotated per cell), :func:`split_h5ad` / :func:`merge_h5ad` (shards),
  :func:`evaluate`, :func:`plot_annotation`, :func:`annotation_table`, :func:`annotation_summary`.
- Integration: :func:`prepare_reference`, :func:`query_gene_table`, :func:`integrate_query`, and their reports.
- Imaging: :func:`image_step` (fit the layout and write it with its preview).
- Explanation: :func:`explain_file`.
- Models: :func:`load_models`, :func:`registered_models`, :func:`fetch`, :func:`install`,
  :func:`package_model`, :func:`resolve_model`, :func:`model_card`, :func:`read_metadata`.
- Around them: reading and atomic writing (:func:`read_h5ad`, :func:`write_h5ad_atomic`, ...), output checks,
  threads and devices, and the option dataclasses and defaults the command line builds its options from.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {  # module → the names it defines that this API hands out
    "cellpix.core.bundle": ("read_metadata",),
    "cellpix.core.clusters": ("DEFAULT_RESOLUTION",),
    "cellpix.core.fields": ("bounds_of",),
    "cellpix.core.hierarchy": ("Hierarchy", "check_ontology", "hierarchy_for_training", "resolve_hierarchy"),
    "cellpix.core.layout": ("DEFAULT_LAYOUT_PRESET", "DEFAULT_PSEUDO_COUNT", "DISCRETIZATIONS", "GeneLayout",
                            "LAYOUT_PRESETS"),
    "cellpix.core.model_card": ("model_card", "render_card"),
    "cellpix.core.models": ("fetch", "install", "package_model", "registered_models"),
    "cellpix.core.predict": ("PRECISIONS",),
    "cellpix.core.trained": ("TrainedModel",),
    "cellpix.data.genes": ("DEFAULT_MIN_COVERAGE",),
    "cellpix.data.io": ("STORAGE_ERRORS", "atomic_path", "check_output_location", "check_outputs_distinct",
                        "read_h5ad", "storage_message", "write_h5ad_atomic", "write_text_atomic"),
    "cellpix.data.runtime": ("check_device", "check_device_name", "claim_process", "configure_threads",
                             "resolve_device"),
    "cellpix.data.yaml_text": ("read_yaml",),
    "cellpix.scaffold": ("new_plugin",),
    "cellpix.steps.annotate.annotate": ("annotate_adata", "annotate_file", "load_models"),
    "cellpix.steps.annotate.options": ("AnnotateOptions", "CELLS_PER_SHARD", "CHUNK_SIZE", "NOVELTY_RULES"),
    "cellpix.steps.annotate.clustering": ("batch_codes",),
    "cellpix.steps.annotate.evaluate": ("evaluate", "read_mapping", "truth_labels", "write_confusion"),
    "cellpix.steps.annotate.plots": ("plot_annotation",),
    "cellpix.steps.annotate.results": ("annotation_summary", "annotation_table"),
    "cellpix.steps.annotate.shards": ("merge_h5ad", "split_h5ad"),
    "cellpix.steps.annotate.whole_query": ("consensus_file",),
    "cellpix.steps.explain.options": ("BACKGROUNDS", "ExplainOptions", "TARGETS"),
    "cellpix.steps.explain.step": ("explain_file",),
    "cellpix.steps.imaging.step": ("image_step",),
    "cellpix.steps.integrate.query": ("describe_mixing", "integrate_query", "load_reference_panel"),
    "cellpix.steps.integrate.options": ("HVG_FLAVORS", "QCOptions", "QueryOptions"),
    "cellpix.steps.integrate.reference": ("prepare_reference", "query_gene_table"),
    "cellpix.steps.integrate.report": ("write_query_report", "write_reference_report"),
    "cellpix.steps.train.config": ("DEFAULT_LR", "KEEPS", "LOSSES", "OPTIMIZERS", "PRESETS", "TrainConfig"),
    "cellpix.steps.train.data": ("stratified_split",),
    "cellpix.steps.train.trainer": ("is_main_process",),
}
# public name → (module, the name it has there), where the two differ
_RENAMED = {"resolve_model": ("cellpix.core.models", "resolve"), "plugin_guide": ("cellpix.plugin_docs", "render")}
_SOURCE = {name: (module, name) for module, names in _MODULES.items() for name in names} | _RENAMED

__all__ = sorted(_SOURCE)


def __getattr__(name: str) -> Any:
    if name in _SOURCE:
        module, attribute = _SOURCE[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellpix.api.files' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
