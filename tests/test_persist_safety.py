"""Loading a saved router from elsewhere: the file picks no ledger, sizes are bounded before
allocation, checksums are streamed, nothing is written (read-only directories work) and a
`.lock` symlink is never followed out of the directory."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import shared_core.persist as persist
import shared_core.router as router_module
from shared_core.budget import MemoryStore
from shared_core.fitting import fit_router
from shared_core.persist import MAX_ARRAY_BYTES, PersistError
from shared_core.router import Router

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@pytest.fixture(scope="module")
def fitted(train_sample, test_split, tmp_path_factory):
    """A k-NN router (it has arrays in every slot) saved once, and prompts to compare estimates on."""
    router = fit_router(train_sample(300, seed=1), "knn")
    directory = tmp_path_factory.mktemp("saved")
    router.save(directory)
    return directory, router, test_split.prompts[:20]


@pytest.fixture
def copy(fitted, tmp_path):
    """The saved router's two files (no .lock: as if unpacked from an archive) in a fresh directory."""
    directory, _, _ = fitted
    target = tmp_path / "router"
    target.mkdir()
    for name in ("router.json", "arrays.npz"):
        (target / name).write_bytes((directory / name).read_bytes())
    return target


def resign(directory: Path, change) -> None:
    """Edit router.json and recompute its checksum (and the arrays'), as a forger who knows the format would."""
    manifest = json.loads((directory / "router.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    change(body)
    body["arrays_sha256"] = hashlib.sha256((directory / "arrays.npz").read_bytes()).hexdigest()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    (directory / "router.json").write_text(
        json.dumps({**body, "manifest_sha256": hashlib.sha256(canonical).hexdigest()})
    )


def same_estimates(a: Router, b: Router, prompts) -> None:
    ea, eb = a.estimate(prompts), b.estimate(prompts)
    for field in ("quality", "input_tokens", "output_tokens", "cost"):
        np.testing.assert_array_equal(getattr(ea, field), getattr(eb, field))


@pytest.fixture
def opened_stores(monkeypatch):
    """Every store argument the Router passes to open_store."""
    calls = []
    real = router_module.open_store

    def spy(target=None, **kw):
        calls.append(target)
        return real(target, **kw)

    monkeypatch.setattr(router_module, "open_store", spy)
    return calls


# ---------------------------------------------------------------- 1. the file never picks the ledger

@pytest.mark.parametrize("url", ["sqlite:///tmp/evil.db", "sqlite:////{tmp}/abs-evil.db", "redis://evil.example:6379/0"])
def test_a_store_named_by_a_resigned_manifest_is_refused_and_never_opened(
    copy, tmp_path, monkeypatch, opened_stores, url
):
    monkeypatch.chdir(tmp_path)  # sqlite:///tmp/evil.db is relative: it would land in tmp_path/tmp
    (tmp_path / "tmp").mkdir()
    url = url.format(tmp=str(tmp_path).lstrip("/"))
    absolute_evil_existed = Path("/tmp/evil.db").exists()
    resign(copy, lambda b: b["settings"].update(store=url))
    with pytest.raises(PersistError, match="never chooses its ledger.*pass store="):
        Router.load(copy)
    assert opened_stores == []
    assert not (tmp_path / "tmp" / "evil.db").exists() and not (tmp_path / "abs-evil.db").exists()
    assert Path("/tmp/evil.db").exists() == absolute_evil_existed


def test_unknown_settings_are_refused_rather_than_passed_to_the_router(copy, opened_stores):
    resign(copy, lambda b: b["settings"].update(embedder="tfidf"))
    with pytest.raises(PersistError, match=r"unknown settings \['embedder'\]"):
        Router.load(copy)
    assert opened_stores == []


def test_the_caller_chooses_the_ledger_and_memory_is_the_default(copy, tmp_path, opened_stores):
    assert isinstance(Router.load(copy).store, MemoryStore)
    ledger = tmp_path / "ledger.db"
    loaded = Router.load(copy, store=f"sqlite:///{ledger}")
    assert type(loaded.store).__name__ == "SQLiteStore" and ledger.exists()
    assert opened_stores == [None, f"sqlite:///{ledger}"]


# ---------------------------------------------------------------- 2. array sizes bounded before reading

def npy_member(header: dict, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def replace_member(directory: Path, key: str, data: bytes) -> None:
    """Rewrite arrays.npz with `key`'s .npy member replaced by raw bytes (deflated)."""
    path = directory / "arrays.npz"
    with zipfile.ZipFile(path) as old:
        members = {info.filename: old.read(info) for info in old.infolist()}
    members[f"{key}.npy"] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for name, blob in members.items():
            new.writestr(name, blob)


def test_a_small_file_declaring_a_huge_array_is_refused_before_allocating(copy):
    # 2 MiB of zeros behind a header declaring 2**28 float64 = 2 GiB; deflated to a few KiB.
    shape = (2**28,)
    replace_member(
        copy, "quality/X", npy_member({"descr": "<f8", "fortran_order": False, "shape": shape}, bytes(2 << 20))
    )
    assert (copy / "arrays.npz").stat().st_size < (2 << 20)
    resign(copy, lambda b: b["arrays"]["quality/X"].update(shape=list(shape)))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PersistError, match=r"array 'quality/X' declares <f8\[268435456\] \(2147483648 bytes\).*"
                                               r"over max_array_bytes=1073741824"):
            Router.load(copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5
    assert peak < 32 << 20, f"peak {peak} bytes"


def test_the_limit_is_on_the_arrays_total_and_can_be_changed(copy, fitted):
    _, router, prompts = fitted
    with np.load(copy / "arrays.npz", allow_pickle=False) as npz:
        sizes = {k: npz[k].nbytes for k in npz.files}
    total = sum(sizes.values())
    assert total < MAX_ARRAY_BYTES
    same_estimates(router, Router.load(copy, max_array_bytes=total), prompts)
    with pytest.raises(PersistError, match=rf"array '[^']+' declares .* over max_array_bytes={total - 1}"):
        Router.load(copy, max_array_bytes=total - 1)
    largest = max(sizes.values())
    with pytest.raises(PersistError, match="refused before reading it"):
        Router.load(copy, max_array_bytes=largest - 1)


def test_an_object_array_is_refused_without_unpickling(copy, monkeypatch):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    replace_member(copy, "quality/Y", buffer.getvalue())
    resign(copy, lambda b: b["arrays"]["quality/Y"].update(shape=[2], dtype="|O"))
    import pickle

    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(PersistError, match="array 'quality/Y' has an object dtype"):
        Router.load(copy)


def test_a_member_shorter_than_its_header_says_is_refused(copy):
    replace_member(
        copy, "quality/Y", npy_member({"descr": "<f8", "fortran_order": False, "shape": (100, 11)}, bytes(80))
    )
    resign(copy, lambda b: b["arrays"]["quality/Y"].update(shape=[100, 11]))
    with pytest.raises(PersistError, match="array 'quality/Y' is truncated: 80 of 8800 bytes"):
        Router.load(copy)


def test_fortran_ordered_arrays_read_back_exactly(copy, fitted):
    _, router, prompts = fitted
    with np.load(copy / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: np.asfortranarray(npz[k]) for k in npz.files}
    assert any(a.ndim == 2 for a in arrays.values())
    np.savez(copy / "arrays.npz", **arrays)
    resign(copy, lambda b: None)
    same_estimates(router, Router.load(copy), prompts)


# ---------------------------------------------------------------- 3. streamed checksums

@pytest.mark.slow
def test_a_large_arrays_file_is_hashed_in_bounded_memory_before_parsing(copy, monkeypatch):
    # 256 MiB (sparse, quick to make) that is not the saved arrays: refused as not matching,
    # without holding the file in memory and without ever opening it as a zip.
    with open(copy / "arrays.npz", "r+b") as f:
        f.truncate(256 << 20)
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("parsed before its checksum was compared"))
    tracemalloc.start()
    try:
        with pytest.raises(PersistError, match="does not match router.json"):
            Router.load(copy, max_array_bytes=1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * persist.CHUNK_BYTES + (1 << 20), f"peak {peak} bytes"


def test_hashing_reads_one_chunk_at_a_time(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(5 * persist.CHUNK_BYTES + 123)
    path.write_bytes(data)
    sizes = []

    class Spy(io.BufferedReader):
        def read(self, n=-1):
            sizes.append(n)
            return super().read(n)

    with Spy(io.FileIO(path)) as f:
        assert persist._sha256_file(f) == hashlib.sha256(data).hexdigest()
    assert sizes and all(0 < n <= persist.CHUNK_BYTES for n in sizes)


def test_a_3_gib_arrays_file_is_refused_by_its_size_unread(copy, monkeypatch):
    with open(copy / "arrays.npz", "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    monkeypatch.setattr(persist, "_sha256_file", lambda f: pytest.fail("hashed a file too large to hold the arrays"))
    started = time.perf_counter()
    with pytest.raises(PersistError, match=r"arrays.npz is 3221225472 bytes: too large .* max_array_bytes=1073741824"):
        Router.load(copy)
    assert time.perf_counter() - started < 2


def test_the_manifest_length_is_bounded(copy):
    size = (copy / "router.json").stat().st_size
    with pytest.raises(PersistError, match=f"is {size} bytes, more than max_manifest_bytes=1000"):
        Router.load(copy, max_manifest_bytes=1000)


def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(copy):
    (copy / "arrays.npz").unlink()
    os.mkfifo(copy / "arrays.npz")
    with pytest.raises(PersistError, match="arrays.npz is not a regular file"):
        Router.load(copy)


# ---------------------------------------------------------------- 4. loading writes nothing

@pytest.fixture
def writes_into(monkeypatch):
    """Opens for writing (os.open, open, io.open) of paths inside a directory: recorded, then refused
    with EACCES like a read-only directory would. Running as root, chmod alone cannot show it."""
    seen = []

    def inside(directory, path):
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(directory.resolve())
        except TypeError:  # an int file descriptor
            return False

    def guard(directory):
        real_os_open, real_open = os.open, builtins.open

        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            if flags & WRITE_FLAGS and inside(directory, path):
                seen.append(("os.open", os.fspath(path), flags))
                raise PermissionError(errno.EACCES, "read-only", os.fspath(path))
            return real_os_open(path, flags, mode, dir_fd=dir_fd)

        def py_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and inside(directory, file):
                seen.append(("open", os.fspath(file), mode))
                raise PermissionError(errno.EACCES, "read-only", os.fspath(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", py_open)
        monkeypatch.setattr(io, "open", py_open)
        return seen

    return guard


def test_loading_creates_and_writes_nothing_in_the_directory(copy, fitted, writes_into):
    _, router, prompts = fitted
    before = sorted(p.name for p in copy.iterdir())
    seen = writes_into(copy)
    same_estimates(router, Router.load(copy), prompts)
    assert seen == [] and sorted(p.name for p in copy.iterdir()) == before  # no .lock appeared


def test_a_router_loads_from_a_read_only_directory(fitted, tmp_path, writes_into):
    directory, router, prompts = fitted
    target = tmp_path / "ro"
    router.save(target)  # with its .lock, which loading opens read-only to take a shared lock
    assert (target / ".lock").exists()
    modes = {p: p.stat().st_mode for p in [target, *target.iterdir()]}
    for p in target.iterdir():
        p.chmod(0o444)
    target.chmod(0o555)
    try:
        # As root (these tests' usual user) the mode bits do not stop writes: refuse them instead.
        seen = writes_into(target) if os.access(target, os.W_OK) else []
        same_estimates(router, Router.load(target), prompts)
        assert seen == []
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _save_variant(router: Router, prompt: str, directory: str, weight: float, times: int) -> None:
    """A forked worker: its own cost weight and k-NN memory (so its own arrays), saved over and over."""
    router.cost_weight = weight
    for _ in range(int(weight)):
        router.feedback(router.decide(prompt), 0.0)
    for _ in range(times):
        router.save(directory)


def test_a_lockless_load_during_saves_still_returns_one_whole_router(fitted, tmp_path, monkeypatch):
    """A reader that cannot lock (no usable .lock) re-reads when the manifest is replaced mid-read."""
    import contextlib
    import multiprocessing

    _, router, prompts = fitted
    ctx = multiprocessing.get_context("fork")
    weights = [1.0, 2.0, 3.0]
    workers = [ctx.Process(target=_save_variant, args=(router, prompts[0], str(tmp_path), w, 10)) for w in weights]
    for w in workers:
        w.start()
    # Only this (the reader's) process: the workers were forked before, and keep locking.
    monkeypatch.setattr(persist, "_shared_lock", lambda d: contextlib.nullcontext(False))
    read_manifest = persist._read_manifest

    def slow_read_manifest(*args):  # widen the window for a save to slip between the two files
        result = read_manifest(*args)
        time.sleep(0.003)
        return result

    monkeypatch.setattr(persist, "_read_manifest", slow_read_manifest)
    loaded = []
    while any(w.is_alive() for w in workers):
        if (tmp_path / "router.json").exists():
            r = Router.load(tmp_path)  # a mixed pair would fail its checksum
            loaded.append((r.cost_weight, len(r.quality.memory_.X)))
    for w in workers:
        w.join()
        assert w.exitcode == 0
    base = len(router.quality.memory_.X)
    assert loaded and set(loaded) <= {(w, base + int(w)) for w in weights}


# ---------------------------------------------------------------- 5. nothing written outside

def test_a_lock_symlink_pointing_outside_is_not_followed(fitted, tmp_path):
    directory, router, _ = fitted
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "router"
    target.mkdir()
    for name in ("router.json", "arrays.npz"):
        (target / name).write_bytes((directory / name).read_bytes())
    (target / ".lock").symlink_to(outside / "created-through-the-link")
    with pytest.raises(PersistError, match=r"\.lock is a symbolic link"):
        router.save(target)
    with pytest.raises(PersistError, match=r"\.lock is a symbolic link"):
        Router.load(target)
    assert list(outside.iterdir()) == []

    victim = outside / "victim"
    victim.write_text("keep")
    (target / ".lock").unlink()
    (target / ".lock").symlink_to(victim)
    stat = victim.stat()
    with pytest.raises(PersistError, match="symbolic link"):
        router.save(target)
    assert victim.read_text() == "keep" and victim.stat().st_mtime_ns == stat.st_mtime_ns


def test_saving_over_symlinked_files_replaces_the_links_not_their_targets(fitted, tmp_path):
    directory, router, prompts = fitted
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "router"
    target.mkdir()
    for name in ("router.json", "arrays.npz"):
        (outside / name).write_text("someone else's file")
        (target / name).symlink_to(outside / name)
    router.save(target)
    assert all((outside / n).read_text() == "someone else's file" for n in ("router.json", "arrays.npz"))
    assert not (target / "router.json").is_symlink() and not (target / "arrays.npz").is_symlink()
    assert {p.name for p in target.iterdir()} == {"router.json", "arrays.npz", ".lock"}
    same_estimates(router, Router.load(target), prompts)


def test_the_size_limits_are_documented_constants():
    assert persist.MAX_ARRAY_BYTES == 1 << 30 and persist.CHUNK_BYTES == 1 << 20
    assert "max_array_bytes" in (persist.load_router.__doc__ or "")
