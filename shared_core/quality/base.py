"""The interface every quality predictor follows (scikit-learn habits: fit, predict, state_),
and `Estimator`, the base that derives parameters, copies and saved state from `__init__`."""

from __future__ import annotations

import inspect
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import NotFittedError

__all__ = [
    "Estimator", "QualityPredictor", "ExtensiblePredictor", "OnlinePredictor", "check_targets", "check_fitted",
    "check_rows", "check_labels", "check_profile", "model_index", "l2_normalise", "serial_blas", "needs_embedding",
    "check_int_param", "check_number_param",
]

E = TypeVar("E", bound="Estimator")


class Estimator:
    """Hyper-parameters are `__init__`'s arguments, kept as same-named attributes (scikit-learn's rule).

    From that one list come get_params, set_params, clone and the parameter half of get_state /
    from_state; a subclass supplies only its learned state (`_state`, `_restore`). scikit-learn's
    own BaseEstimator would do, but importing it costs about a second on every `import shared_core`.
    """

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters by name, as `__init__` takes them."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self: E, **params: Any) -> E:
        """Change hyper-parameters by name; returns self. ValueError naming an unknown one, or an
        invalid value (the parameters are then left as they were)."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameters {unknown}; it has {list(self._param_names())}")
        # A fitted predictor reads its parameters at predict time: a bad one is refused here, not
        # found later as NaN predictions or a saved router that will not load.
        before = {name: getattr(self, name) for name in params}
        for name, value in params.items():
            setattr(self, name, value)
        try:
            self._check_params()
        except (ValueError, TypeError) as error:
            for name, value in before.items():
                setattr(self, name, value)
            if isinstance(error, ValueError):
                raise
            raise ValueError(f"invalid parameters {params!r} for {type(self).__name__}: {error}") from error
        return self

    def clone(self: E) -> E:
        """An unfitted copy with the same hyper-parameters."""
        return type(self)(**self.get_params())

    def _check_params(self) -> None:
        """ValueError for an invalid hyper-parameter (run by fit and from_state)."""

    def _check_fitted(self) -> None:
        """NotFittedError unless fit (or from_state) has run; predictors mark it by `models_`."""
        check_fitted(self)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able hyper-parameters and learned values, plus the learned arrays (what a saved router holds)."""
        self._check_fitted()
        # NumPy scalars (k=np.int64(50)) as the Python numbers JSON can hold.
        params = {k: v.item() if isinstance(v, np.generic) else v for k, v in self.get_params().items()}
        learned, arrays = self._state()
        return {**params, **learned}, arrays

    @classmethod
    def from_state(cls: type[E], state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> E:
        """Rebuild a fitted instance from get_state() output (ValueError when inconsistent).

        A hyper-parameter the state lacks takes `__init__`'s default: it was added after the state was saved.
        """
        self = cls(**{name: state[name] for name in cls._param_names() if name in state})
        self._check_params()
        self._restore(state, arrays)
        return self

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The learned state: JSON-able values (model names, vocabularies) and arrays."""
        raise NotImplementedError

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Set the learned state from `_state()` output, ValueError when it is inconsistent."""
        raise NotImplementedError


@runtime_checkable
class QualityPredictor(Protocol):
    """fit(X, Y, models) learns from embeddings X (n, d) and qualities Y (n, m, NaN = missing)."""

    models_: list[str]

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> QualityPredictor: ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        ...


def check_int_param(name: str, value: Any, low: int = 1) -> None:
    """ValueError unless the hyper-parameter `name` is an int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_number_param(name: str, value: Any, low: float = 0.0, high: float = math.inf, *,
                       low_open: bool = False) -> None:
    """ValueError unless the hyper-parameter `name` is a finite real number (not a bool) in
    [low, high] ((low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not (value > low if low_open else value >= low) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high < math.inf \
            else (f"> {low:g}" if low_open else f">= {low:g}")
        raise ValueError(f"{name} must be a finite number {'in ' if high < math.inf else ''}{interval}, got {value!r}")


def needs_embedding(predictor: object) -> bool:
    """Whether `predictor` reads prompt embeddings: its `needs_embedding` class attribute (False for a
    prompt-blind one, such as the prior), True when it does not say — the safe side: it gets them."""
    return bool(getattr(predictor, "needs_embedding", True))


def check_targets(X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated (X, Y, models): 2-D, aligned, one name per column, values in [0, 1] or NaN."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} rows but Y has {len(Y)}")
    models = [str(m) for m in models]
    if len(models) != Y.shape[1]:
        raise ValueError(f"{len(models)} model names for {Y.shape[1]} quality columns")
    if len(set(models)) != len(models):
        raise ValueError("model names must be unique")
    finite = Y[~np.isnan(Y)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("quality must lie in [0, 1] (NaN marks a missing label)")
    return X, Y, models


@runtime_checkable
class ExtensiblePredictor(Protocol):
    """A predictor that takes in a model described only by a small labelled profile set (UniRoute)."""

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Describe model `name` by its labels y on the profile embeddings X (no refit of the rest)."""
        ...

    def remove_model(self, name: str) -> None:
        """Forget model `name`."""
        ...


@runtime_checkable
class OnlinePredictor(Protocol):
    """A predictor that learns from single observed outcomes after it was fitted."""

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Learn that `model` reached qualities y on prompts X."""
        ...


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is a cosine."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2 and len(X) == 1:
        # One row (every decision): np.linalg.norm's sum of squares, without its call overhead.
        norm = math.sqrt(np.add.reduce(X[0] * X[0]))
        return X / norm if norm > 0 else X.copy()
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def check_fitted(predictor: object) -> None:
    """RuntimeError naming the class when `predictor` has not been fitted yet."""
    if not hasattr(predictor, "models_"):
        raise NotFittedError(f"{type(predictor).__name__} is not fitted: call fit(X, Y, models) first")


def check_rows(X: np.ndarray, dim: int) -> np.ndarray:
    """X as a float (n, dim) array, or ValueError naming the shape it has."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {X.shape}")
    return X


def check_labels(
    X: np.ndarray, y: np.ndarray, dim: int, *, name: str, lo: float = 0.0, hi: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (X, y) for one model: aligned, at least one label, values in [lo, hi] or NaN."""
    X = check_rows(X, dim)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"{len(X)} prompts but {len(y)} labels for model {name!r}")
    finite = y[~np.isnan(y)]
    if finite.size == 0:
        raise ValueError(f"no labels for model {name!r} (all NaN)")
    if finite.min() < lo or (hi is not None and finite.max() > hi):
        bounds = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"labels for model {name!r} must be {bounds} (NaN marks a missing label)")
    return X, y


def check_profile(
    X: np.ndarray, y: np.ndarray, dim: int, *, name: str, known: Sequence[str], lo: float = 0.0, hi: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """check_labels for a model not yet in `known` (ValueError if the name is taken or empty)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in known:
        raise ValueError(f"model {name!r} is already known; remove it first")
    return check_labels(X, y, dim, name=name, lo=lo, hi=hi)


def model_index(models: Sequence[str], name: str) -> int:
    """Column of `name` in `models`, or KeyError listing the known ones."""
    try:
        return list(models).index(name)
    except ValueError:
        raise KeyError(f"unknown model {name!r}; known models are {list(models)}") from None


@contextmanager
def serial_blas() -> Iterator[None]:
    """BLAS on one thread inside the block: for fits made of many small solves (an L-BFGS step
    on n × d times d × K, a regression per model, cross-validation folds), OpenBLAS's threads cost
    more than they save — on 2 cores `fit_router(train, "auto")` takes 11.7 s with them and
    6.8 s without (RouterBench's 2,218 prompts; benchmarks/fit_threads.py).

    BLAS has one thread setting per process, and OpenBLAS restores it reliably only from the
    thread that changed it: so one thread at a time is inside (a fit in another thread waits for
    this one; the same thread may nest), and it sets and restores the setting itself. Other
    threads' matrix products run on one thread too while a fit is inside. The limit is a
    speed-up, never needed for a correct result: in a thread other than the first to use it,
    OpenBLAS 0.3.31 was seen to keep its threads. Entering costs about 2 ms, so it wraps whole
    fits, never a decision."""
    global _serial_depth
    from threadpoolctl import threadpool_limits

    with _serial_lock:
        limits = threadpool_limits(limits=1, user_api="blas") if _serial_depth == 0 else None
        _serial_depth += 1
        try:
            yield
        finally:
            _serial_depth = max(0, _serial_depth - 1)  # a fork inside the block reset it in the child
            if limits is not None:
                limits.restore_original_limits()


_serial_lock = threading.RLock()
_serial_depth = 0


def _after_fork_in_child() -> None:
    # A child forked while another thread was inside would inherit the held lock, and hang at
    # its first fit; that thread does not exist in the child, so nobody is inside.
    global _serial_lock, _serial_depth
    _serial_lock, _serial_depth = threading.RLock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
