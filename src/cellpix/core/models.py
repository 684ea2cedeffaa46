"""Ready-made models: a registry of named bundles that plugins (and cellpix itself) ship or point to.

A package publishes models with a manifest, ``models.json``, beside them::

    {"schema": 1, "models": [{"name": "pbmc-zheng2017", "file": "pbmc-zheng2017.cellpix",
                              "sha256": "…", "size_bytes": 1791300, "card": {…}}]}

Each entry's source is a ``file`` shipped in the package (relative to the manifest) or a ``url``; the sha256 is
of the whole file, so a bundle is checked against what its publisher recorded before it is loaded (the bundle's
own checksum then checks its contents). The model card travels in the manifest, so ``cellpix models show``
can describe a model before it is downloaded, and inside the bundle (``metadata['card']``), so
``cellpix inspect`` describes a file wherever it came from.

Downloads go through pooch: streamed to a temporary file in the cache, verified, then moved into place, so an
interrupted or corrupt download leaves nothing behind. The cache is ``$CELLPIX_MODELS`` if set, else the
platform's user cache folder. ``file://`` URLs are copied the same way (mirrors on shared storage, and tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cellpix.errors import BundleError, CellpixError, UnknownNameError

MANIFEST_NAME = "models.json"
MANIFEST_SCHEMA = 1
CACHE_ENV = "CELLPIX_MODELS"
BUNDLE_SUFFIX = ".cellpix"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: where its bundle is, the sha256 of that file, and its model card."""

    name: str
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    url: str | None = None
    size_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.url is None):
            raise CellpixError(f"model {self.name!r}: give exactly one of a packaged file and a URL")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise CellpixError(f"model {self.name!r}: sha256 must be 64 lower-case hex digits")

    @property
    def source(self) -> str:
        """The packaged file's path or the URL, as a user would read it."""
        return str(self.file) if self.file is not None else str(self.url)

    def describe(self) -> dict[str, Any]:
        """Name, source, checksum, size and card: what ``cellpix models show`` prints."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "card": self.card}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, ModelEntry]:
    """The models a package publishes in ``directory/models.json`` (``{}`` when there is no manifest)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CellpixError(f"{path}: not valid JSON ({exc})") from exc
    schema = document.get("schema")
    if schema != MANIFEST_SCHEMA:
        raise CellpixError(f"{path}: model manifest schema {schema!r} is not supported by this cellpix "
                           f"(reads {MANIFEST_SCHEMA}); upgrade cellpix")
    entries = {}
    for row in document.get("models", []):
        try:
            entry = ModelEntry(name=row["name"], sha256=row["sha256"], card=row.get("card", {}),
                               file=Path(directory) / row["file"] if "file" in row else None,
                               url=row.get("url"), size_bytes=row.get("size_bytes"))
        except KeyError as exc:
            raise CellpixError(f"{path}: a model entry lacks {exc}") from exc
        entries[entry.name] = entry
    return entries


def write_manifest_entry(directory: str | Path, entry: dict[str, Any]) -> Path:
    """Add or replace one model in ``directory/models.json`` (written atomically, entries sorted by name)."""
    from cellpix.data.io import write_text_atomic

    path = Path(directory) / MANIFEST_NAME
    rows = json.loads(path.read_text(encoding="utf-8"))["models"] if path.is_file() else []
    rows = sorted([r for r in rows if r["name"] != entry["name"]] + [entry], key=lambda r: r["name"])
    write_text_atomic(path, json.dumps({"schema": MANIFEST_SCHEMA, "models": rows}, indent=2, sort_keys=True) + "\n")
    return path


def registered_models() -> dict[str, ModelEntry]:
    """Every model cellpix and its plugins register (the ``cellpix_models`` hook)."""
    from cellpix import plugins

    return plugins.registered("models")


def cache_dir() -> Path:
    """Where downloaded models are kept: ``$CELLPIX_MODELS``, else the platform's user cache folder."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import pooch

    return Path(pooch.os_cache("cellpix")) / "models"


def fetch(name: str, progress: bool = False) -> Path:
    """The verified local file of a registered model, downloaded into the cache when it is a URL.

    A packaged file is checked against its sha256 and used where it is. A URL is downloaded once, verified, and
    reused from the cache afterwards (pooch re-downloads a cached file whose checksum no longer matches).
    """
    models = registered_models()
    if name not in models:
        raise UnknownNameError("model", name, list(models))
    entry = models[name]
    if entry.file is not None:
        return _checked_package_file(entry)
    return _download(entry, progress)


def _checked_package_file(entry: ModelEntry) -> Path:
    if not entry.file.is_file():
        raise BundleError(f"model {entry.name!r}: its packaged file {entry.file} is missing; reinstall the "
                          "package that registers it")
    actual = file_sha256(entry.file)
    if actual != entry.sha256:
        raise BundleError(f"model {entry.name!r}: {entry.file} does not match its published sha256 "
                          f"({entry.sha256[:12]}…, file {actual[:12]}…); reinstall the package that registers it")
    return entry.file


def _download(entry: ModelEntry, progress: bool) -> Path:
    import pooch

    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CellpixError(f"cannot create the model cache {folder} ({exc.strerror}); set {CACHE_ENV} to a "
                           "writable folder") from exc
    pooch.get_logger().setLevel("INFO" if progress else "WARNING")  # its "Downloading data from …" line
    downloader = _copy_file_url if entry.url.startswith("file://") else pooch.HTTPDownloader(progressbar=progress)
    try:
        path = pooch.retrieve(entry.url, known_hash=f"sha256:{entry.sha256}", path=folder,
                              fname=f"{entry.name}-{entry.sha256[:12]}{BUNDLE_SUFFIX}", downloader=downloader,
                              progressbar=False)
    except ValueError as exc:  # pooch's checksum mismatch; the temporary download is already deleted
        raise BundleError(f"model {entry.name!r}: the file at {entry.url} does not match its published sha256 "
                          f"{entry.sha256[:12]}…; nothing was kept") from exc
    except Exception as exc:  # a missing file, requests' connection and HTTP errors
        raise CellpixError(f"model {entry.name!r}: cannot download {entry.url} ({_reason(exc)}); nothing was "
                           f"kept. Offline? Fetch it where there is a network and set {CACHE_ENV} to that folder, "
                           "or pass the bundle's path") from exc
    return Path(path)


def _reason(exc: Exception) -> str:
    """A short cause: requests' connection errors repeat the whole URL and pool state in their message."""
    if type(exc).__name__ == "ConnectionError":
        return "no connection"
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:160] or type(exc).__name__


def _copy_file_url(url: str, output_file: Any, pooch_obj: Any, check_only: bool = False) -> bool | None:
    """A pooch downloader for ``file://`` URLs: copy the file into the temporary name pooch verifies."""
    source = Path(unquote(urlparse(url).path))
    if check_only:
        return source.is_file()
    with open(source, "rb") as src, open(output_file, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return None


def resolve(spec: str | Path, progress: bool = False) -> Path:
    """A bundle's local path from a file path or a registered model name.

    An existing file wins over a name. A string that names no file and no model fails listing the models,
    unless it looks like a path (a folder part or the bundle suffix), then it fails as a missing file.
    """
    path = Path(spec)
    if path.is_file():
        return path
    text = str(spec)
    if text in registered_models():
        return fetch(text, progress)
    if os.sep in text or "/" in text or text.endswith(BUNDLE_SUFFIX):
        raise BundleError(f"{text}: the file does not exist (nor is a model registered under that name)")
    raise UnknownNameError("model", text, list(registered_models()))


def package_model(bundle: str | Path, name: str, directory: str | Path, *, url: str | None = None,
                  author_card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish a bundle under ``name`` in a package's model folder and record it in ``models.json``.

    The bundle is verified, its author's card (``author_card``: training data, provenance, figures, licence) is
    written into it, and it is saved as ``directory/NAME.cellpix``; with ``url`` the manifest points to where the
    author will upload that file instead, and the local copy is what to upload. Returns the manifest entry.
    """
    from cellpix.core.bundle import ModelBundle
    from cellpix.core.model_card import model_card, with_card

    if not name or any(c in name for c in "/\\ ") or name != name.strip():
        raise CellpixError(f"model name {name!r}: use letters, digits, '-', '_' and '.', no spaces or slashes")
    loaded = ModelBundle.load(bundle)
    if author_card:
        loaded.metadata = with_card(loaded.metadata, **author_card)
    target = Path(directory) / f"{name}{BUNDLE_SUFFIX}"
    Path(directory).mkdir(parents=True, exist_ok=True)
    loaded.save(target)
    entry: dict[str, Any] = {"name": name, "sha256": file_sha256(target), "size_bytes": target.stat().st_size,
                             "card": model_card(loaded.metadata)}
    entry.update({"url": url} if url else {"file": target.name})
    write_manifest_entry(directory, entry)
    return entry


def install(directory: str | Path, *, name: str, bundle: str | Path | None = None, url: str | None = None,
            sha256: str | None = None, progress: bool = False) -> dict[str, str]:
    """Put one verified model into ``directory`` for a server's model table (Galaxy's data manager).

    The source is a registered model (``name`` alone), a bundle file, or a URL with its sha256. The file is
    written as ``NAME-SHA12.cellpix`` and its bundle checksum verified; returns the table row: ``value`` (the
    name), ``name`` (what users read: title and checksum) and ``path`` (the file name in ``directory``).
    """
    from cellpix.core.bundle import ModelBundle
    from cellpix.core.model_card import model_card
    from cellpix.data.io import atomic_path

    if (bundle is not None) + (url is not None) > 1:
        raise CellpixError("give a bundle file or a URL, not both")
    if url is not None and not sha256:
        raise CellpixError("a model by URL needs its published --sha256")
    if bundle is None and url is None:
        source = fetch(name, progress)
    elif bundle is not None:
        source = Path(bundle)
    else:
        source = _download(ModelEntry(name=name, sha256=sha256.lower(), url=url), progress)
    loaded = ModelBundle.load(source)  # the bundle's own checksum, whatever the source
    digest = file_sha256(source)
    target = Path(directory) / f"{name}-{digest[:12]}{BUNDLE_SUFFIX}"
    Path(directory).mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    title = model_card(loaded.metadata).get("title") or f"{name} (trained on {_reference(loaded.metadata)})"
    return {"value": name, "name": f"{name}: {title} (sha256 {digest[:12]})", "path": target.name}


def _reference(metadata: dict[str, Any]) -> str:
    training = metadata.get("training", {})
    return f"{training.get('n_cells', '?')} cells of {training.get('reference') or 'an unnamed reference'}"
