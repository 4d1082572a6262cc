"""shared_core.native: which compiled kernels are used, and the one warning when one is missing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from shared_core import native
from shared_core.quality import memory as memory_module
from shared_core.quality.memory import LabelMemory


@pytest.fixture
def fresh(monkeypatch):
    """native's bookkeeping as in a new process."""
    monkeypatch.setattr(native, "_missing", {})
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "ENABLED", True)


def test_a_module_built_from_other_sources_is_not_used(fresh, monkeypatch, caplog):
    stale = types.SimpleNamespace(ABI=native.ABI - 1)
    monkeypatch.setattr(native.importlib, "import_module", lambda name: stale)
    assert native.kernel("_knn") is None
    assert "ABI" in native._missing["_knn"]
    monkeypatch.setattr(native.importlib, "import_module", lambda name: types.SimpleNamespace(ABI=native.ABI))
    assert native.kernel("_tfidf") is not None


def test_a_missing_kernel_warns_once_where_its_work_is_done_and_never_when_switched_off(fresh, monkeypatch, caplog):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(native.importlib, "import_module", missing)
    assert native.kernel("_knn") is None and native.kernel("_tfidf") is None
    assert not caplog.records  # nothing at import
    monkeypatch.setattr(memory_module, "_knn", None)
    rng = np.random.default_rng(0)
    memory = LabelMemory(rng.normal(size=(40, 4)), rng.integers(0, 2, size=(40, 2)).astype(float))
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        for _ in range(3):
            memory.neighbour_means(rng.normal(size=(2, 4)), 5, np.full(2, 0.5), 0.0)
    warnings = [r for r in caplog.records if "compiled kernels" in r.getMessage()]
    assert len(warnings) == 1
    assert "shared_core._tfidf, shared_core._knn" in warnings[0].getMessage()
    caplog.clear()
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_missing", {})  # OMNIROUTE_KERNELS=0: nothing is missing, nothing said
    memory.neighbour_means(rng.normal(size=(2, 4)), 5, np.full(2, 0.5), 0.0)
    assert not caplog.records


def test_switched_off_by_the_environment_in_a_new_process():
    code = ("from shared_core import native, embed; from shared_core.quality import memory; "
            "print(native.ENABLED, embed._tfidf is None, memory._knn is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMNIROUTE_KERNELS": "0"})
    assert out.stdout.split() == ["False", "True", "True"] and not out.stderr
