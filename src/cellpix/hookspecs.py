"""The hooks a cellpix plugin can implement.

This file is the whole plugin contract. A plugin is a module (or object) with
functions decorated by :data:`hookimpl` and named like the specs below; it is
found through the ``cellpix`` entry-point group. Each hook returns a mapping
of *name → thing*, and cellpix merges the mappings of all plugins; a later
plugin may not silently replace an earlier name (that raises an error).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "cellpix"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cellpix_hierarchies():
    """Return ``{name: Hierarchy or zero-argument callable returning one}`` of cell-type hierarchies.

    Use a callable when building the hierarchy is costly (e.g. reading YAML):
    it is only called when a user asks for that hierarchy.
    """


@hookspec
def cellpix_backbones():
    """Return ``{name: BackboneSpec}`` of CNN feature extractors.

    A ``BackboneSpec`` (``cellpix.core.backbones``) holds a builder
    ``build(in_chans, pretrained) -> torch.nn.Module`` whose module maps a
    ``(batch, in_chans, H, W)`` image to ``(batch, num_features)`` and exposes
    ``num_features``. Any timm model name works without a plugin.
    """


@hookspec
def cellpix_integration_methods():
    """Return ``{name: IntegrationMethod}`` of batch-correction methods.

    An ``IntegrationMethod`` (``cellpix.steps.integrate.methods``) has a ``name``,
    a ``description``, the Python modules it needs (checked before any work,
    with an ``install_hint``) and ``run(task) -> ndarray``. ``task`` holds
    dense log1p(CP10k) expression of all cells (reference first), their batch
    labels and the reference batches; ``run`` returns corrected *expression*
    of the same shape, not an embedding, because images are made from
    expression. cellpix then maps the result back onto the reference's
    per-gene scale (unless the method sets ``anchored=False``) and clips it
    to the data's per-gene range.
    """


@hookspec
def cellpix_layout_methods():
    """Return ``{name: callable(random_state, **params) -> estimator}`` of gene-layout manifolds.

    The estimator has scikit-learn's ``fit_transform`` and returns 2-D
    coordinates; pyDeepInsight's ``ImageTransformer`` uses it to place genes.
    """


@hookspec
def cellpix_models():
    """Return ``{name: ModelEntry}`` of ready-made model bundles (``cellpix models list``).

    A ``ModelEntry`` (``cellpix.core.models``) names a bundle shipped in the package or a URL, the sha256 of
    that file and its model card. A package that ships models keeps a ``models.json`` manifest beside them and
    returns ``read_manifest(folder)``; ``cellpix models package`` writes that manifest.
    """


@hookspec
def cellpix_register_commands(cli):
    """Add click commands to the ``cellpix`` group passed as ``cli``."""
