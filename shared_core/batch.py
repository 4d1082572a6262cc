"""Batch routing in bounded memory: estimate the prompts a chunk at a time, keep what the solve needs, solve once.

Estimating a whole batch at once holds every prompt's sparse n-gram row, embedding and the
predictors' temporaries together (about 47 KiB a prompt, 5 GiB at 100,000 prompts). Here
`router.estimate` sees `chunk_size` prompts at a time and only its (n, m) arrays are kept:
quality and cost in float64 (the solver's input, so the plan is the one a single estimate of the
whole batch gives) and the feasibility mask, plus — for `route_batch`, whose result carries the
estimate — the estimate's other per-prompt arrays. Peak memory then grows by about a kilobyte a
prompt (11 candidates), mostly the solver's own arrays.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import Infeasible, RoutingError
from .solver import BatchRouting, Solution, capacity_counts, solve

if TYPE_CHECKING:
    from .estimation import Estimate
    from .router import Router

__all__ = ["CHUNK_SIZE", "EstimateCollector", "route_batch", "solve_collected"]

logger = logging.getLogger("omniroute")

#: Prompts estimated at once: large enough that per-call overheads vanish (a chunk of 1,000
#: routes as fast as 10,000), small enough that a chunk's temporaries stay a few tens of MB.
CHUNK_SIZE = 1000

# What the solver reads of an estimate; the feasibility mask is kept beside them.
_SOLVER_FIELDS = ("quality", "cost")


class EstimateCollector:
    """`router.estimate` of successive chunks of prompts, gathered into (n, m) arrays for one solve.

    `keep_all=False` keeps only what the solver reads — quality and cost (float64) and the
    feasibility mask (bool) — about 17 bytes per prompt and candidate; `keep_all=True` also keeps
    the estimate's other per-prompt arrays (tokens, output caps), so that `estimate()` can
    rebuild the whole Estimate. A candidate is feasible for a prompt when the prompt leaves room
    for at least one output token in its context window. Raises RoutingError when the router's
    candidates change between chunks (their columns would no longer line up).
    """

    def __init__(self, router: Router, *, keep_all: bool = True) -> None:
        self.router = router
        self.keep_all = keep_all
        self.n = 0
        self.candidates: list[str] | None = None
        self._parts: dict[str, list[np.ndarray]] = {}
        self._template: Estimate | None = None

    def add(self, prompts: Sequence[str], input_tokens: np.ndarray | None = None) -> None:
        """Estimate `prompts` (and keep the result); `input_tokens` as `Router.estimate` takes them."""
        est = self.router.estimate(prompts, input_tokens)
        if self.candidates is None:
            self._start(est)
        elif list(est.candidates) != self.candidates:
            raise RoutingError(f"the router's candidates changed while the batch was estimated (from "
                               f"{self.candidates} to {list(est.candidates)}); route the batch again")
        rows = len(prompts)
        arrays: dict[str, np.ndarray] = {"feasible": est.output_caps >= 1}
        names = self._array_fields(est, rows, len(est.candidates)) if self.keep_all else _SOLVER_FIELDS
        for name in names:
            arrays[name] = np.asarray(getattr(est, name))
        for name in _SOLVER_FIELDS:
            arrays[name] = arrays[name].astype(np.float64, copy=False)
        for name, values in arrays.items():
            # A view would keep its whole base (some temporary of the estimate) alive: keep a copy.
            self._parts.setdefault(name, []).append(values if values.base is None else values.copy())
        self.n += rows

    def _start(self, est: Estimate) -> None:
        self.candidates = list(est.candidates)
        # The first chunk's estimate lends its type and non-array fields to the whole one.
        self._template = est

    @staticmethod
    def _array_fields(est: Estimate, rows: int, columns: int) -> list[str]:
        """The estimate's per-prompt fields: (prompts, candidates) arrays."""
        return [f.name for f in dataclasses.fields(est)
                if isinstance(getattr(est, f.name), np.ndarray) and getattr(est, f.name).shape == (rows, columns)]

    def _take(self, name: str) -> np.ndarray:
        """One kept array over every chunk; its chunks are released as it is assembled."""
        parts = self._parts.pop(name)
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
        parts.clear()
        return whole

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(quality, cost, feasible), each (n, m): the solver's input. Ends the collection."""
        self._check_started()
        return self._take("quality"), self._take("cost"), self._take("feasible")

    def estimate(self) -> tuple[Estimate, np.ndarray]:
        """The whole Estimate (keep_all=True only) and the feasibility mask (n, m). Ends the collection."""
        self._check_started()
        if not self.keep_all:
            raise RuntimeError("this collector kept only the solver's arrays (keep_all=False)")
        assert self._template is not None
        feasible = self._take("feasible")
        fields = {name: self._take(name) for name in list(self._parts)}
        return dataclasses.replace(self._template, **fields), feasible  # type: ignore[arg-type]  # the array fields

    def _check_started(self) -> None:
        if self.candidates is None:
            raise RuntimeError("no prompts were added")
        if "feasible" not in self._parts:
            raise RuntimeError("the collected arrays were already taken")


def solve_collected(
    quality: np.ndarray, cost: np.ndarray, feasible: np.ndarray, candidates: Sequence[str], *,
    budget: float | None = None, quality_target: float | None = None,
    capacities: Mapping[str, float | int] | None = None,
) -> Solution:
    """The batch problem on collected arrays, as `Router.route_batch` states it (see `route_batch`)."""
    stuck = np.flatnonzero(~np.asarray(feasible, dtype=bool).any(axis=1))
    if stuck.size:
        # A batch asks for no tools or structured output: only a prompt too long for every window is stuck.
        more = f" and {stuck.size - 10:,} more" if stuck.size > 10 else ""
        leave = "leaves" if stuck.size == 1 else "leave"
        raise Infeasible(f"{stuck.size:,} of the {len(feasible):,} prompts {leave} no room in any "
                         f"candidate's context window (rows {stuck[:10].tolist()}{more}, counted from 0): no "
                         "candidate can serve them; shorten them or route them apart")
    return solve(quality, cost, budget=budget, quality_target=quality_target,
                 capacity=capacity_counts(capacities, candidates, len(cost)), feasible=feasible)


def route_batch(
    router: Router,
    prompts: Sequence[str],
    *,
    budget: float | None = None,
    quality_target: float | None = None,
    capacities: Mapping[str, float | int] | None = None,
    input_tokens: np.ndarray | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> BatchRouting:
    """`Router.route_batch` in bounded memory: the same plan, estimated `chunk_size` prompts at a time.

    Best total predicted quality within `budget` USD, or the least predicted cost with mean
    predicted quality ≥ `quality_target` (exactly one); `capacities` caps a candidate's prompts
    by share (float in [0, 1]) or count (int); `input_tokens` ((n,) or (n, m)) replaces counting.
    Returns the models, the solution and the whole Estimate ((n, m) arrays, as one
    `router.estimate` of all prompts gives). Raises RoutingError for a prompt that is not a str,
    ValueError for no prompts or bad shapes and sizes, and the solver's Infeasible.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a whole number of prompts >= 1, got {chunk_size!r}")
    n = len(prompts)
    if not n:
        raise ValueError("route_batch needs at least one prompt")
    for i, prompt in enumerate(prompts):
        # Checked here so that the error names the prompt's place in the batch, not in its chunk.
        if not isinstance(prompt, str):
            raise RoutingError(f"prompts[{i}] must be str, got {type(prompt).__name__}")
    tokens: Any = None
    if input_tokens is not None:
        tokens = np.asarray(input_tokens, dtype=np.float64)
        if tokens.ndim not in (1, 2) or len(tokens) != n:
            raise ValueError(f"input_tokens must have shape ({n},) or ({n}, candidates), got {tokens.shape}")
    collector = EstimateCollector(router)
    for lo in range(0, n, chunk_size):
        collector.add(prompts[lo:lo + chunk_size], None if tokens is None else tokens[lo:lo + chunk_size])
    est, feasible = collector.estimate()
    solution = solve_collected(est.quality, est.cost, feasible, est.candidates, budget=budget,
                               quality_target=quality_target, capacities=capacities)
    names = est.candidates
    return BatchRouting([names[j] for j in solution.choice.tolist()], solution, est)
