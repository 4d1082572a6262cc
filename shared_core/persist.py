"""Saving and loading a fitted router as data: one JSON manifest and one NumPy .npz, no pickle.

A saved router is a directory holding `router.json` (format name and version, candidates,
settings, each component's kind and parameters, the shape and dtype of every array, a SHA-256
of the arrays file and of the manifest itself) and `arrays.npz` (read with allow_pickle=False).
Loading checks all of it and raises `PersistError` naming what is wrong; only component kinds
listed in `COMPONENTS` are ever constructed, so loading an untrusted directory runs no code
from it. Framework model objects and ledgers are not saved: reattach them when loading.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import uuid
import zipfile
from contextlib import contextmanager
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from .budget import Budget
from .candidates import Candidate
from .embed import TfidfSvdEmbedder
from .length import HybridLength, LengthPrior
from .pacing import DualPacer
from .quality import (
    ClusterQuality, HybridQuality, KNNQuality, LearnedMapQuality, LogisticQuality, PriorQuality,
)

if TYPE_CHECKING:
    from .router import Router

__all__ = ["FORMAT", "VERSION", "COMPONENTS", "PersistError", "save_router", "load_router"]

FORMAT = "omniroute-router"
VERSION = 1
MANIFEST = "router.json"
ARRAYS = "arrays.npz"
LOCK = ".lock"

#: Every class a saved router may name, by its kind in the manifest.
COMPONENTS: dict[str, type] = {
    "prior": PriorQuality,
    "knn": KNNQuality,
    "logistic": LogisticQuality,
    "hybrid": HybridQuality,
    "cluster": ClusterQuality,
    "learned-map": LearnedMapQuality,
    "length-prior": LengthPrior,
    "length-hybrid": HybridLength,
    "tfidf-svd": TfidfSvdEmbedder,
}
_KIND_OF = {cls: kind for kind, cls in COMPONENTS.items()}
_SLOTS = ("embedder", "quality", "lengths")
# An embedder wrapping a framework model (LangChain, LlamaIndex) is reattached, not saved.
_EXTERNAL = "external"


class PersistError(ValueError):
    """A saved router that cannot be loaded: missing, truncated, tampered with, or another version."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _dump_component(obj: Any, slot: str, arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    # An unfitted predictor (a router built from candidates' priors) is rebuilt by the Router.
    if obj is None or (slot != "embedder" and not hasattr(obj, "models_")):
        return None
    kind = _KIND_OF.get(type(obj))
    if kind is None:
        if slot == "embedder":
            return {"kind": _EXTERNAL, "class": type(obj).__name__}
        raise TypeError(
            f"cannot save a {type(obj).__name__} as the router's {slot}; savable kinds: {sorted(COMPONENTS)}"
        )
    params, state = obj.get_state()
    for key, value in state.items():
        arrays[f"{slot}/{key}"] = np.ascontiguousarray(value)
    return {"kind": kind, "params": params}


def save_router(router: Router, directory: str | Path) -> Path:
    """Write `router` to `directory` (created if needed); returns the manifest's path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    components = {slot: _dump_component(getattr(router, slot), slot, arrays) for slot in _SLOTS}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    blob = buffer.getvalue()
    body = {
        "format": FORMAT,
        "version": VERSION,
        "candidates": [c.model_dump(mode="json") for c in router.candidates],
        "settings": {
            "cost_weight": router.cost_weight,
            "strict_scopes": router.strict_scopes,
            "max_fallbacks": router.max_fallbacks,
            "reservation_ttl_s": router.reservation_ttl_s,
            "default_budget": None if router.default_budget is None else router.default_budget.model_dump(mode="json"),
            "pacer": router.pacer.model_dump(mode="json"),
        },
        "components": components,
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
        "arrays_sha256": _sha256(blob),
    }
    manifest = {**body, "manifest_sha256": _sha256(_canonical(body))}
    # Arrays first, manifest last, each by rename: a crash never leaves a manifest without its
    # arrays; the directory lock keeps concurrent saves (and loads) from interleaving the pair.
    with _locked(out, fcntl.LOCK_EX):
        _write_atomic(out / ARRAYS, blob)
        _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False).encode())
    return out / MANIFEST


@contextmanager
def _locked(directory: Path, mode: int) -> Iterator[None]:
    """Hold an advisory lock on the router directory (exclusive to save, shared to load)."""
    with open(directory / LOCK, "a+b") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PersistError(f"{path} not found: not a saved router directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PersistError(f"{path} is not valid JSON (truncated or corrupted?): {e}") from None
    if not isinstance(manifest, dict):
        raise PersistError(f"{path} must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise PersistError(f"{path} is not an omniroute router (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise PersistError(f"{path} has format version {manifest.get('version')!r}; this omniroute reads {VERSION}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    try:
        digest = _sha256(_canonical(body))
    except ValueError as e:
        raise PersistError(f"{path} holds values JSON does not allow: {e}") from None
    if manifest.get("manifest_sha256") != digest:
        raise PersistError(f"{path} was modified after it was saved (checksum mismatch)")
    for key, kind in (("candidates", list), ("settings", dict), ("components", dict), ("arrays", dict)):
        if not isinstance(manifest.get(key), kind):
            raise PersistError(f"{path}: '{key}' must be a JSON {kind.__name__}")
    return manifest


def _read_arrays(path: Path, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PersistError(f"{path} not found: the router's arrays are missing")
    blob = path.read_bytes()
    if _sha256(blob) != manifest.get("arrays_sha256"):
        raise PersistError(f"{path} does not match {MANIFEST} (tampered, truncated or from another save)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise PersistError(f"{path} cannot be read as NumPy arrays: {e}") from None
    expected = manifest["arrays"]
    if set(arrays) != set(expected):
        raise PersistError(f"{path} holds arrays {sorted(arrays)}, the manifest lists {sorted(expected)}")
    for key, array in arrays.items():
        spec = expected[key]
        if not isinstance(spec, dict) or list(array.shape) != spec.get("shape") or array.dtype.str != spec.get("dtype"):
            raise PersistError(f"array {key!r} is {array.dtype.str}{list(array.shape)}, the manifest says {spec}")
        if array.dtype.kind not in "fiub":
            raise PersistError(f"array {key!r} has non-numeric dtype {array.dtype}")
        if array.dtype.kind == "f" and np.isinf(array).any():
            raise PersistError(f"array {key!r} holds infinite values")
    return arrays


def _load_component(spec: Any, slot: str, arrays: Mapping[str, np.ndarray]) -> Any:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise PersistError(f"{MANIFEST}: component '{slot}' must be null or an object with a 'kind'")
    kind = spec["kind"]
    if kind == _EXTERNAL:
        raise PersistError(
            f"this router was saved with an external {slot} ({spec.get('class')}): pass {slot}= to load it"
        )
    cls = COMPONENTS.get(kind)
    if cls is None:
        raise PersistError(f"{MANIFEST}: unknown {slot} kind {kind!r}; known kinds: {sorted(COMPONENTS)}")
    prefix = f"{slot}/"
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    try:
        return cls.from_state(spec.get("params"), state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PersistError(f"{MANIFEST}: the saved {slot} ({kind}) is invalid: {e!r}") from None


def load_router(
    directory: str | Path,
    *,
    models: Mapping[str, Any] | None = None,
    embedder: Any = None,
    **router_kwargs: Any,
) -> Router:
    """Load a router saved by `save_router` (PersistError when anything is missing or inconsistent).

    `models` maps candidate names to the framework model objects to call; `embedder` replaces
    the saved embedder (required when it was external); other keywords (e.g. `store=`) go to
    the Router and override saved settings.
    """
    from .router import Router

    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise PersistError(f"{d / MANIFEST} not found: not a saved router directory")
    with _locked(d, fcntl.LOCK_SH):
        manifest = _read_manifest(d / MANIFEST)
        arrays = _read_arrays(d / ARRAYS, manifest)
    models = dict(models or {})
    try:
        candidates = [Candidate.model_validate(c) for c in manifest["candidates"]]
        settings = dict(manifest["settings"])
        settings["pacer"] = DualPacer.model_validate(settings["pacer"])
        if settings.get("default_budget") is not None:
            settings["default_budget"] = Budget.model_validate(settings["default_budget"])
    except (ValidationError, KeyError, TypeError) as e:
        raise PersistError(f"{MANIFEST}: invalid candidates or settings: {e}") from None
    unknown = sorted(set(models) - {c.name for c in candidates})
    if unknown:
        names = [c.name for c in candidates]
        raise ValueError(f"models given for unknown candidates {unknown}; candidates are {names}")
    candidates = [c.model_copy(update={"model": models[c.name]}) if c.name in models else c for c in candidates]
    parts = {slot: _load_component(manifest["components"].get(slot), slot, arrays)
             for slot in _SLOTS if not (slot == "embedder" and embedder is not None)}
    if embedder is not None:
        parts["embedder"] = embedder
    try:
        return Router(candidates, **parts, **{**settings, **router_kwargs})
    except (ValueError, TypeError) as e:
        raise PersistError(f"{MANIFEST}: the saved parts do not make a router: {e}") from None
