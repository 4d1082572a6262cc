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


def test_a_process_forked_while_a_fit_runs_can_fit_too():
    # The child inherits the lock a thread of the parent holds; that thread does not exist there.
    import os
    import signal

    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with serial_blas():
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: a fit must not wait for a lock nobody will release
            signal.alarm(5)
            with serial_blas():
                pass
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        leave.set()
        holder.join(10)
