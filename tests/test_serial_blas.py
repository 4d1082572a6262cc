"""`serial_blas`: fits run BLAS on one thread, and the process's setting comes back after them."""

from __future__ import annotations

import threading
import time

import numpy as np  # noqa: F401  (loads the BLAS library whose setting is checked)
from threadpoolctl import threadpool_info

from shared_core.quality.base import serial_blas


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_a_fit_runs_blas_on_one_thread_and_the_setting_comes_back_even_after_an_error():
    before = _blas_threads()
    try:
        with serial_blas():
            with serial_blas():  # a fit inside a fit (a learned map inside cross-validation)
                assert all(n == 1 for n in _blas_threads())
            assert all(n == 1 for n in _blas_threads())
            raise RuntimeError("a fit failed")
    except RuntimeError:
        pass
    assert _blas_threads() == before


def test_fits_in_several_threads_at_once_leave_the_setting_as_it_was():
    # Overlapping fits once left BLAS on one thread for good: the last to leave restored the
    # one-thread setting another had made.
    before = _blas_threads()
    for _ in range(20):
        def fit() -> None:
            with serial_blas():
                with serial_blas():
                    time.sleep(0.002)

        threads = [threading.Thread(target=fit) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert _blas_threads() == before
