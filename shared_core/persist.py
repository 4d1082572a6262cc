"""Saving and loading a fitted router as data: one JSON manifest and one NumPy .npz, no pickle.

A saved router is a directory holding `router.json` (format name and version, candidates,
settings, each component's kind and parameters, the shape and dtype of every array, a SHA-256
of the arrays file and of the manifest itself) and `arrays.npz` (read with allow_pickle=False;
float arrays are stored, since inflating them would slow every load, labels deflated, and member
timestamps fixed, so the same router always saves the same bytes).
Loading checks all of it and raises `PersistError` naming what is wrong; only component kinds
listed in `COMPONENTS` are ever constructed, so loading an untrusted directory runs no code
from it. Framework model objects and ledgers are not saved: reattach them when loading.

Loading a directory from elsewhere is bounded and side-effect free:

* The ledger is never chosen by the file. `save_router` writes no store, and a manifest whose
  settings name one (or any setting not listed in `SETTINGS`) is refused with `PersistError`
  before anything is opened; the caller passes `store=` to `load_router` (memory by default).
* The manifest may be at most `max_manifest_bytes` (default `MAX_MANIFEST_BYTES`) long.
  The arrays file is hashed in `CHUNK_BYTES` reads and compared with the manifest before it
  is parsed; then each .npy member's header is read from the zip and the arrays are refused,
  naming the array, when their declared shape x itemsize add up to more than
  `max_array_bytes` (default `MAX_ARRAY_BYTES`), or when a dtype is not a plain number or
  boolean (so never an object dtype) -- all before any array memory is allocated. An arrays
  file larger than that limit allows (plus zip overhead) is refused before it is hashed.
* Loading writes nothing: it takes a shared lock on an existing `.lock` opened read-only (so it
  works from read-only directories) and never creates one. Without a usable lock it re-reads
  the pair when the manifest is replaced mid-read, so it still returns one whole router.
* Saving writes only inside the directory: each file goes to a fresh temporary name
  (O_EXCL | O_NOFOLLOW) renamed over the old one, and a `.lock` that is a symbolic link is
  refused, by saves and loads alike, instead of being followed out of the directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import stat
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from .budget import Budget
from .candidates import CLIENT_FIELDS, Candidate
from .errors import PersistError
from .pacing import DualPacer
from .quality import PREDICTORS, Registry

if TYPE_CHECKING:
    from .router import Router

__all__ = [
    "FORMAT", "VERSION", "COMPONENTS", "RENAMED_KINDS", "SETTINGS", "MAX_ARRAY_BYTES", "MAX_MANIFEST_BYTES",
    "CHUNK_BYTES", "PersistError", "save_router", "load_router",
]

FORMAT = "omniroute-router"
VERSION = 1
MANIFEST = "router.json"
ARRAYS = "arrays.npz"
LOCK = ".lock"

#: Most bytes all of a saved router's arrays may declare together (shape x itemsize, summed);
#: `load_router(max_array_bytes=...)` overrides it.
MAX_ARRAY_BYTES = 1 << 30
#: Longest `router.json` that is read; `load_router(max_manifest_bytes=...)` overrides it.
MAX_MANIFEST_BYTES = 64 << 20
#: Files are hashed, and array data copied out of the zip, this many bytes at a time.
CHUNK_BYTES = 1 << 20
#: The settings a manifest may hold, all passed to the Router. No ledger: see load_router.
SETTINGS = frozenset({
    "cost_weight", "strict_scopes", "max_fallbacks", "reservation_ttl_s", "default_budget", "pacer",
    "session_idle_ttl_s", "scope_prefix", "attempt_timeout_s", "deadline_s", "cap_headroom",
})
# Longest .npy header accepted (numpy writes a few hundred bytes at most).
_MAX_NPY_HEADER = 1 << 16
# A lockless load re-reads the pair this many times when the manifest is replaced meanwhile,
# waiting up to _SETTLE_S each time for a save caught between its two renames to finish (a
# saver descheduled on a loaded machine can sit there for far longer than a rename takes).
_READ_ATTEMPTS = 5
_SETTLE_S = 1.0

#: Every class a saved router may name, by its kind in the manifest: the quality predictors
#: under their registry names (`quality.PREDICTORS`), then the length predictors and the embedder.
#: A class's module is imported only when a manifest names its kind.
COMPONENTS = Registry({
    **PREDICTORS.locations,
    "length-prior": "shared_core.length:LengthPrior",
    "length-hybrid": "shared_core.length:HybridLength",
    "tfidf-svd": "shared_core.embed:TfidfSvdEmbedder",
})
#: Kinds that routers saved by earlier versions name, by the kind now in COMPONENTS.
RENAMED_KINDS = {"logistic": "parametric"}
# A member that deflate does not shrink by at least this fraction is stored: float arrays (embeddings,
# SVD directions) shrink by 0-15 %, and inflating them costs every load more than the bytes saved
# (labels and counts shrink 20-30 times and stay deflated).
_MIN_DEFLATE_SAVING = 0.5
_DEFLATE_SAMPLE = 4 << 20
# A fixed timestamp on every member: the same router always saves the same bytes (and checksum).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SLOTS = ("embedder", "quality", "lengths")
# An embedder wrapping a framework model (LangChain, LlamaIndex) is reattached, not saved.
_EXTERNAL = "external"


class _ArraysMismatch(PersistError):
    """The arrays file is not the one the manifest was saved with (tampered, or a save in between)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _dump_component(obj: Any, slot: str, arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    # An unfitted predictor (a router built from candidates' priors) is rebuilt by the Router.
    if obj is None or (slot != "embedder" and not hasattr(obj, "models_")):
        return None
    kind = COMPONENTS.kind_of(type(obj))
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
    blob = _npz_bytes(arrays)
    body = {
        "format": FORMAT,
        "version": VERSION,
        # What each candidate's user stated apart from what was read from its client
        # (Candidate.derived): an adapter wrapping the loaded router reads its own clients afresh.
        "candidates": [c.model_dump(mode="json", exclude_unset=True) for c in router.candidates],
        "read_from_clients": {c.name: read for c in router.candidates if (read := c.read_from_client())},
        "settings": {
            "cost_weight": router.cost_weight,
            "strict_scopes": router.strict_scopes,
            "max_fallbacks": router.max_fallbacks,
            "reservation_ttl_s": router.reservation_ttl_s,
            "session_idle_ttl_s": router.session_idle_ttl_s,
            # A tenant's router must stay confined to its tenant once saved and loaded.
            "scope_prefix": router.scope_prefix,
            "attempt_timeout_s": router.attempt_timeout_s,
            "deadline_s": router.deadline_s,
            "cap_headroom": router.cap_headroom,
            "default_budget": None if router.default_budget is None else router.default_budget.model_dump(mode="json"),
            "pacer": router.pacer.model_dump(mode="json"),
        },
        "components": components,
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
        "arrays_sha256": _sha256(blob),
    }
    manifest = {**body, "manifest_sha256": _sha256(_canonical(body))}
    # Arrays first, manifest last, each by rename: a crash never leaves a manifest without its
    # arrays; the directory lock keeps concurrent saves (and locked loads) from interleaving the pair.
    with _exclusive_lock(out):
        _write_atomic(out / ARRAYS, blob)
        _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False).encode())
    return out / MANIFEST


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The arrays as an .npz archive (what np.load reads), each member deflated only where that pays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", allowZip64=True) as zf:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            data = member.getvalue()
            sample = data[:_DEFLATE_SAMPLE]  # enough to tell floats from labels, bounded time and memory
            deflates = len(zlib.compress(sample, 1)) <= (1 - _MIN_DEFLATE_SAVING) * len(sample)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if deflates else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def _symlinked_lock(path: Path) -> PersistError:
    return PersistError(f"{path} is a symbolic link: refusing to follow it out of the router directory")


@contextmanager
def _exclusive_lock(directory: Path) -> Iterator[None]:
    """Hold the directory's lock exclusively (creating `.lock`, never through a symlink) to save."""
    path = directory / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _symlinked_lock(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PersistError(f"{path} is not a regular file; cannot lock the router directory")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def _shared_lock(directory: Path) -> Iterator[bool]:
    """Hold the directory's lock shared when `.lock` exists and opens read-only; yields whether it does.

    Never creates, writes or follows a symlinked `.lock`, so loading works from read-only directories.
    """
    path = directory / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _symlinked_lock(path) from None
        yield False  # no lock file (never saved here), or one we may not read: read lockless
        return
    try:
        locked = stat.S_ISREG(os.fstat(fd).st_mode)
        if locked:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield locked
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a fresh temporary file beside `path` and rename it over `path` (a symlink there is replaced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_regular(path: Path, missing: str) -> io.BufferedReader:
    """`path` opened for reading, refusing anything but a regular file (a FIFO or device would hang or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PersistError(f"{path} not found: {missing}") from None
    except OSError as e:
        raise PersistError(f"{path} cannot be opened: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PersistError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256_file(f: io.BufferedReader) -> str:
    """SHA-256 of an open file from its start, read CHUNK_BYTES at a time (memory stays bounded)."""
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(path: Path, max_bytes: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The checked manifest and the stamp (device, inode, size, mtime) of the file it came from."""
    with _open_regular(path, "not a saved router directory") as f:
        st = os.fstat(f.fileno())
        if st.st_size > max_bytes:
            raise PersistError(f"{path} is {st.st_size} bytes, more than max_manifest_bytes={max_bytes}")
        # Read what fstat says is there (plus a byte to notice growth): read(n) preallocates n bytes.
        raw = f.read(st.st_size + 1)
    if len(raw) > max_bytes:
        raise PersistError(f"{path} is more than max_manifest_bytes={max_bytes} long")
    try:
        manifest = json.loads(raw.decode("utf-8"))
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
    if "store" in manifest["settings"]:
        raise PersistError(
            f"{path} names a ledger store in its settings: a saved router never chooses its ledger "
            "(Router.save writes none); pass store= to Router.load instead"
        )
    unknown = sorted(set(manifest["settings"]) - SETTINGS)
    if unknown:
        raise PersistError(f"{path}: unknown settings {unknown}; a saved router holds only {sorted(SETTINGS)}")
    return manifest, _stamp(st)


def _zip_allowance(max_array_bytes: int) -> int:
    """The largest arrays file that can hold `max_array_bytes` of arrays (deflate or store, plus zip headers)."""
    return max_array_bytes + max_array_bytes // 100 + (1 << 20)


def _exactly(fp: Any, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise PersistError(f"{what} is truncated")
    return data


def _npy_header(fp: Any, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy stream's header, reading only the header."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        size_field = _exactly(fp, 2, f"array {key!r}")
        length = struct.unpack("<H", size_field)[0]
        parse = fmt.read_array_header_1_0
    elif version == (2, 0):
        size_field = _exactly(fp, 4, f"array {key!r}")
        length = struct.unpack("<I", size_field)[0]
        parse = fmt.read_array_header_2_0
    else:
        raise PersistError(f"array {key!r} is in .npy format version {version}, which is not read")
    if length > _MAX_NPY_HEADER:
        raise PersistError(f"array {key!r} has a {length}-byte header (at most {_MAX_NPY_HEADER} are read)")
    header = io.BytesIO(fmt.magic(*version) + size_field + _exactly(fp, length, f"array {key!r}'s header"))
    fmt.read_magic(header)
    shape, fortran, dtype = parse(header, max_header_size=_MAX_NPY_HEADER)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise PersistError(f"array {key!r} declares an invalid shape {shape}")
    return tuple(shape), bool(fortran), dtype


def _npy_data(fp: Any, key: str, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The data following a header, copied into a new array CHUNK_BYTES at a time."""
    out = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer; numpy types it so on 3.12+
    done = 0
    while done < len(view):
        n = fp.readinto(view[done:done + CHUNK_BYTES])
        if not n:
            raise PersistError(f"array {key!r} is truncated: {done} of {len(view)} bytes")
        done += n
    return out.reshape(shape[::-1]).T if fortran else out.reshape(shape)


def _read_arrays(path: Path, manifest: Mapping[str, Any], max_array_bytes: int) -> dict[str, np.ndarray]:
    with _open_regular(path, "the router's arrays are missing") as f:
        size = os.fstat(f.fileno()).st_size
        if size > _zip_allowance(max_array_bytes):
            raise PersistError(
                f"{path} is {size} bytes: too large to hold at most max_array_bytes={max_array_bytes} of arrays"
            )
        # The file is hashed and then parsed through one open handle: what is checked is what is read.
        if _sha256_file(f) != manifest.get("arrays_sha256"):
            raise _ArraysMismatch(f"{path} does not match {MANIFEST} (tampered, truncated or from another save)")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                return _read_members(zf, path, manifest["arrays"], max_array_bytes)
        except PersistError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as e:
            raise PersistError(f"{path} cannot be read as NumPy arrays: {e}") from None


def _read_members(
    zf: zipfile.ZipFile, path: Path, expected: Mapping[str, Any], max_array_bytes: int
) -> dict[str, np.ndarray]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy") or info.filename[:-4] in members:
            raise PersistError(f"{path} holds an unexpected member {info.filename!r}")
        members[info.filename[:-4]] = info
    if set(members) != set(expected):
        raise PersistError(f"{path} holds arrays {sorted(members)}, the manifest lists {sorted(expected)}")
    # Every header first: sizes and dtypes are checked before any array memory is allocated.
    headers = {}
    total = 0
    for key, info in members.items():
        with zf.open(info) as fp:
            shape, fortran, dtype = _npy_header(fp, key)
        if dtype.hasobject:
            raise PersistError(f"array {key!r} has an object dtype ({dtype}); pickled objects are never loaded")
        if dtype.kind not in "fiub":
            raise PersistError(f"array {key!r} has non-numeric dtype {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        total += nbytes
        if total > max_array_bytes:
            raise PersistError(
                f"array {key!r} declares {dtype.str}{list(shape)} ({nbytes} bytes), taking the arrays to "
                f"{total} bytes, over max_array_bytes={max_array_bytes}; refused before reading it"
            )
        spec = expected[key]
        if not isinstance(spec, dict) or list(shape) != spec.get("shape") or dtype.str != spec.get("dtype"):
            raise PersistError(f"array {key!r} is {dtype.str}{list(shape)}, the manifest says {spec}")
        headers[key] = (shape, fortran, dtype)
    arrays = {}
    for key, info in members.items():
        with zf.open(info) as fp:
            _npy_header(fp, key)
            array = _npy_data(fp, key, *headers[key])
        if array.dtype.kind == "f" and np.isinf(array).any():
            raise PersistError(f"array {key!r} holds infinite values")
        arrays[key] = array
    return arrays


def _read_saved(directory: Path, max_array_bytes: int, max_manifest_bytes: int) -> tuple[dict[str, Any], dict]:
    """The manifest and its arrays, from one save even while other processes save over them."""
    manifest_path = directory / MANIFEST
    with _shared_lock(directory) as locked:
        for attempt in range(_READ_ATTEMPTS):
            manifest, stamp = _read_manifest(manifest_path, max_manifest_bytes)
            try:
                return manifest, _read_arrays(directory / ARRAYS, manifest, max_array_bytes)
            except _ArraysMismatch as e:
                # Under the lock no save is half done, so a mismatch is real. Without it, a save
                # may sit between its two renames: retry once its manifest has replaced ours.
                if locked or attempt + 1 == _READ_ATTEMPTS or not _manifest_replaced(manifest_path, stamp):
                    raise PersistError(str(e)) from None
    raise AssertionError("unreachable")


def _manifest_replaced(path: Path, stamp: tuple[int, ...]) -> bool:
    deadline = time.monotonic() + _SETTLE_S
    while True:
        try:
            if _stamp(os.stat(path)) != stamp:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _load_component(spec: Any, slot: str, arrays: Mapping[str, np.ndarray]) -> Any:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise PersistError(f"{MANIFEST}: component '{slot}' must be null or an object with a 'kind'")
    kind: str = spec["kind"]
    if kind == _EXTERNAL:
        raise PersistError(
            f"this router was saved with an external {slot} ({spec.get('class')}): pass {slot}= to load it"
        )
    cls = COMPONENTS.get(RENAMED_KINDS.get(kind, kind))
    if cls is None:
        raise PersistError(f"{MANIFEST}: unknown {slot} kind {kind!r}; known kinds: {sorted(COMPONENTS)}")
    prefix = f"{slot}/"
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    try:
        # A manifest without params fails inside from_state; the except below reports it as PersistError.
        return cls.from_state(spec.get("params"), state)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PersistError(f"{MANIFEST}: the saved {slot} ({kind}) is invalid: {e!r}") from None


def load_router(
    directory: str | Path,
    *,
    models: Mapping[str, Any] | None = None,
    embedder: Any = None,
    store: Any = None,
    max_array_bytes: int = MAX_ARRAY_BYTES,
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    **router_kwargs: Any,
) -> Router:
    """Load a router saved by `save_router` (PersistError when anything is missing or inconsistent).

    `models` maps candidate names to the framework model objects to call; `embedder` replaces
    the saved embedder (required when it was external). `store` is the ledger (a LedgerStore
    or URL; None = a new in-memory one): only the caller chooses it, and a manifest naming a
    store is refused. `max_array_bytes` bounds the arrays' total declared size and
    `max_manifest_bytes` the manifest's length (see the module docstring). Other keywords go
    to the Router and override saved settings. Loading writes nothing to the directory.
    """
    from .router import Router

    d = Path(directory)
    manifest, arrays = _read_saved(d, max_array_bytes, max_manifest_bytes)
    models = dict(models or {})
    try:
        candidates = [Candidate.model_validate(c) for c in manifest["candidates"]]
        # What their old clients said, still unstated: the router alone keeps it (the core never
        # reads a client), and an adapter binding a client replaces it (Candidate.unbound). Only what
        # a client declares, and never over what a user stated.
        read = manifest.get("read_from_clients", {})
        if not isinstance(read, dict) or not set(read) <= {c.name for c in candidates} or not all(
                isinstance(v, dict) and set(v) <= set(CLIENT_FIELDS) for v in read.values()):
            raise TypeError(f"read_from_clients must map candidates' names to some of {list(CLIENT_FIELDS)}")
        candidates = [c.derived(**{k: v for k, v in read.get(c.name, {}).items() if k not in c.model_fields_set})
                      for c in candidates]
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
        router = Router(candidates, **parts, store=store, **{**settings, **router_kwargs})
    except (ValueError, TypeError) as e:
        raise PersistError(f"{MANIFEST}: the saved parts do not make a router: {e}") from None
    if embedder is None:  # one given by the caller may be a remote service: not called here
        # Parts that each load can still disagree (an embedder of another width than the
        # predictors' memory): one prediction now, rather than the same error on every request.
        try:
            router.pool.predict(router.pool.features(["a probe prompt"]))
        except (ValueError, IndexError) as e:
            raise PersistError(f"{MANIFEST}: the saved embedder and predictors disagree: {e}") from None
    return router
