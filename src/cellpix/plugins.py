"""The plugin registry: built-in plugins and third-party ones, loaded the same way.

Built-in hierarchies, backbones, integration and layout methods live in
:mod:`cellpix.builtin` and are registered from :data:`DEFAULT_PLUGINS`, exactly
like a third-party package that declares a ``cellpix`` entry point.

Plugin authors import everything they implement against from here::

    from cellpix.plugins import BackboneSpec, Hierarchy, IntegrationMethod, hookimpl

Set ``CELLPIX_DISABLE_PLUGINS=1`` to load only the built-ins (useful when a
broken plugin stops cellpix from starting), or to a comma-separated list of
plugin names to block just those.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import pluggy

from cellpix import hookspecs
from cellpix.errors import CellpixError, UnknownNameError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "cellpix.builtin.hierarchies",
    "cellpix.builtin.backbones",
    "cellpix.builtin.layouts",
    "cellpix.builtin.integration",
    "cellpix.builtin.models",
)

DISABLE_ENV = "CELLPIX_DISABLE_PLUGINS"


def _blocked_external_plugins() -> tuple[bool, set[str]]:
    """Read the disable variable: (block all external, names to block)."""
    value = os.environ.get(DISABLE_ENV, "").strip()
    if value.lower() in {"1", "true", "yes", "all", "*"}:
        return True, set()
    return False, {part.strip() for part in value.split(",") if part.strip()}


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    block_all, blocked = _blocked_external_plugins()
    if not block_all:
        for name in blocked:
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    pm.check_pending()
    return pm


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once, on first use)."""
    return _new_plugin_manager()


def reset_plugin_manager() -> None:
    """Forget the cached manager, e.g. after installing a plugin in-process."""
    get_plugin_manager.cache_clear()


def _merged(hook_name: str) -> dict[str, Any]:
    """Merge the ``{name: value}`` mappings all plugins return for one hook."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        result: Mapping[str, Any] | None = impl.function()
        for name, value in (result or {}).items():
            if name in merged:
                raise CellpixError(
                    f"plugin {impl.plugin_name!r} registers {name!r}, already registered by "
                    f"{owner[name]!r}; rename one of them or disable a plugin with {DISABLE_ENV}"
                )
            merged[name] = value
            owner[name] = impl.plugin_name
    return merged


def registered(kind: str) -> dict[str, Any]:
    """All registered things of one kind: hierarchies, backbones, integration_methods, layout_methods, models."""
    return _merged(f"cellpix_{kind}")


def lookup(kind: str, name: str, label: str) -> Any:
    """Find one registered thing by name, or fail listing the names that exist."""
    table = registered(kind)
    if name not in table:
        raise UnknownNameError(label, name, list(table))
    return table[name]


def resolve_lazy(value: Any | Callable[[], Any]) -> Any:
    """Call zero-argument factories registered for lazy loading; pass other values through."""
    return value() if callable(value) and not isinstance(value, type) else value


def plugin_summaries() -> list[dict[str, Any]]:
    """Name, version, hooks and whether it is built in, for each loaded plugin."""
    pm = get_plugin_manager()
    dist_by_plugin = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = dist_by_plugin.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": dist.project_name if dist else name,
                "module": getattr(plugin, "__name__", name),
                "version": dist.version if dist else _own_version(),
                "builtin": name in DEFAULT_PLUGINS,
                "hooks": hooks,
            }
        )
    return rows


def _own_version() -> str:
    from cellpix import __version__

    return __version__


# The contract types a plugin implements against, importable from this one module (loaded on first use, so the
# registry itself stays light).
CONTRACT = {
    "hookimpl": "cellpix.hookspecs",
    "BackboneSpec": "cellpix.core.backbones",
    "Hierarchy": "cellpix.core.hierarchy",
    "BaseType": "cellpix.core.hierarchy",
    "CellType": "cellpix.core.hierarchy",
    "IntegrationMethod": "cellpix.steps.integrate.methods",
    "CellpixError": "cellpix.errors",
    "ModelEntry": "cellpix.core.models",
    "read_manifest": "cellpix.core.models",
}


def __getattr__(name: str) -> Any:
    if name in CONTRACT:
        return getattr(importlib.import_module(CONTRACT[name]), name)
    raise AttributeError(f"module 'cellpix.plugins' has no attribute {name!r}")
