"""Time ChatOmniRoute adds per call: routed invoke/stream vs calling the same fake candidate directly.

The candidate is an offline FakeToolChatModel, so the difference is the router's own work:
token counting, the decision, the ledger's reserve and commit, λ pacing, metadata. Calls
alternate between the two paths so both see the same machine load. The token-count memo is
emptied before every routed call, so each prompt is counted as never seen before (the worst
case). Target: ≤ 1 ms p50 added.
Run: python benchmarks/lc_overhead.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from _common import cold, percentiles_ms, print_table, write_json

from omniroute_lc import ChatOmniRoute
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget
from shared_core.defaults import DEMO_PROMPTS, default_candidates
from shared_core.tokens import count_tokens

REPEAT, WARMUP = 2000, 200
TARGET_P50_MS = 1.0
PROMPTS = [DEMO_PROMPTS[3], "\n\n".join(DEMO_PROMPTS * 4)]


def paired(direct: Callable[[], object], routed: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Wall times of alternating direct and routed calls, after a warm-up."""
    for _ in range(WARMUP):
        direct(), routed()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEAT):
        for fn, out in ((direct, times[0]), (routed, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def main() -> None:
    candidates = [c.model_copy(update={"model": FakeToolChatModel(model_name=c.name)}) for c in default_candidates()]
    chat = ChatOmniRoute(candidates=candidates, max_tokens=256)
    # A paced budget large enough never to refuse: every call reserves, commits and moves λ.
    chat.router.set_budget("bench", Budget(usd=1e6, horizon=10 * (REPEAT + WARMUP)))
    target = chat.invoke("warm up", session="bench").response_metadata["omniroute"]["model"]
    direct_model = chat.router.candidate(target).model

    rows, results = [], {}
    for prompt in PROMPTS:
        label = f"{count_tokens(prompt)}-token prompt"
        for mode, direct, routed in [
            ("invoke", lambda: direct_model.invoke(prompt),
             cold(lambda: chat.invoke(prompt, session="bench"))),
            ("stream", lambda: list(direct_model.stream(prompt)),
             cold(lambda: list(chat.stream(prompt, session="bench")))),
        ]:
            base, via = (percentiles_ms(t) for t in paired(direct, routed))
            added = {k: via[k] - base[k] for k in base}
            results[f"{mode}, {label}"] = {"direct": base, "routed": via, "added": added}
            rows.append([mode, label, base["p50_ms"], via["p50_ms"], added["p50_ms"], added["p99_ms"],
                         "yes" if added["p50_ms"] <= TARGET_P50_MS else "NO"])
    print_table(f"ChatOmniRoute overhead per call, {len(candidates)} candidates, {REPEAT} calls each (ms)",
                ["call", "prompt", "direct p50", "routed p50", "added p50", "added p99", f"≤ {TARGET_P50_MS} ms p50"],
                rows)
    state = chat.router.budget_state("bench")
    assert state.reserved == 0, "the benchmark left money reserved"
    write_json("lc_overhead", {"candidates": len(candidates), "repeat": REPEAT, "chosen": target,
                               "target_p50_added_ms": TARGET_P50_MS, "results": results})


if __name__ == "__main__":
    main()
