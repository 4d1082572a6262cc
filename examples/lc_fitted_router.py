"""A router fitted on RouterBench, used as a LangChain chat model: replay its test split under a budget.

Fits the shared core's router on the training split of the shared RouterBench subset, then
sends test prompts through ChatOmniRoute, whose candidates are named after RouterBench's eleven
models: offline fakes that answer each prompt with that model's recorded RouterBench response,
at that model's real price. One session's budget is a fraction of what GPT-4 on every prompt
would cost; the router paces λ to spend it. Prints accuracy (RouterBench's grading of the
chosen answers) and spend, against GPT-4 on every prompt and the cheapest model on every prompt.
Run: python examples/lc_fitted_router.py [DATA] [--requests N] [--budget FRACTION] [--predictor NAME]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from omniroute_lc import ChatOmniRoute
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, BudgetExceeded
from shared_core.data import RoutingDataset, load_dataset
from shared_core.fitting import DEFAULT_PREDICTOR, PREDICTOR_NAMES, fit_router

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench_subset.parquet"
BEST, CHEAPEST = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"
SESSION = "replay"


def recorded_answers(test: RoutingDataset, n: int) -> dict[str, FakeToolChatModel]:
    """Per model, a fake that answers the first `n` test prompts with the model's recorded response."""
    return {
        model: FakeToolChatModel(model_name=model, answers={test.prompts[i]: test.responses[i][j] for i in range(n)})
        for j, model in enumerate(test.models)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DATA), help="RouterBench-layout dataset (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=400, help="test prompts to replay (default 400)")
    parser.add_argument("--budget", type=float, default=0.3, help="budget as a fraction of GPT-4's cost (default 0.3)")
    parser.add_argument("--predictor", choices=PREDICTOR_NAMES, default=DEFAULT_PREDICTOR)
    args = parser.parse_args(argv)

    dataset = load_dataset(args.data)
    train, test = dataset.subset("train"), dataset.subset("test")
    n = min(args.requests, len(test))
    models = recorded_answers(test, n)
    # The longest recorded answer is about 2,000 tokens: reserve that, not the default 4,096.
    candidates = [c.model_copy(update={"model": models[c.name]}) for c in train.candidates(max_output_tokens=2048)]
    chat = ChatOmniRoute(router=fit_router(train, args.predictor, candidates=candidates))

    recorded_cost = {m: test.cost[:n, j] for j, m in enumerate(test.models)}
    correct = {m: test.quality[:n, j] for j, m in enumerate(test.models)}
    budget = args.budget * float(recorded_cost[BEST].sum())
    chat.router.set_budget(SESSION, Budget(usd=budget, horizon=n))

    chosen, spent, right, refused, as_recorded = Counter(), Counter(), [], 0, 0.0
    for i in range(n):
        try:
            info = chat.invoke(test.prompts[i], session=SESSION).response_metadata["omniroute"]
        except BudgetExceeded:
            refused += 1
            continue
        chosen[info["model"]] += 1
        spent[info["model"]] += info["actual_cost_usd"]
        right.append(correct[info["model"]][i])
        as_recorded += recorded_cost[info["model"]][i]

    print(f"router fitted with {args.predictor!r} on {len(train)} training prompts; {n} test prompts replayed")
    print(f"\n{'model':<36} {'calls':>5} {'spend USD':>10}")
    for model, calls in chosen.most_common():
        print(f"{model:<36} {calls:>5} {spent[model]:>10.4f}")
    state = chat.router.budget_state(SESSION)
    print(f"\n{'policy':<36} {'accuracy':>8} {'cost USD':>9}")
    print(f"{'OmniRoute, budget ' + format(budget, '.4f') + ' USD':<36} {np.nanmean(right):>8.3f} "
          f"{state.committed:>9.4f}   ({refused} refused, {state.reserved:.4f} USD still reserved)")
    for model in (BEST, CHEAPEST):
        print(f"{'always ' + model:<36} {np.nanmean(correct[model]):>8.3f} {recorded_cost[model].sum():>9.4f}")
    print(f"\nRouterBench's recorded cost of the answers the router chose: {as_recorded:.4f} USD "
          f"(the router charged {state.committed:.4f} USD from the fakes' token counts)")


if __name__ == "__main__":
    main()
