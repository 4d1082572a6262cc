"""`serial_blas`: fits run BLAS on one thread, and the process's setting comes back after them."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info

from shared_core.quality.base import serial_blas


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_overlapping_fits_keep_one_thread_until_the_last_leaves_then_restore_the_setting():
    before = _blas_threads()
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, list[int]] = {}

    def first() -> None:
        with serial_blas():
            a_inside.set()
            b_inside.wait(5)
        a_left.set()

    def second() -> None:
        a_inside.wait(5)
        with serial_blas():
            b_inside.set()
            a_left.wait(5)
            seen["inside after the first left"] = _blas_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(n == 1 for n in seen["inside after the first left"])
    assert _blas_threads() == before


def test_an_error_inside_still_restores_the_setting():
    before = _blas_threads()
    try:
        with serial_blas():
            assert all(n == 1 for n in _blas_threads())
            raise RuntimeError("a fit failed")
    except RuntimeError:
        pass
    assert _blas_threads() == before
