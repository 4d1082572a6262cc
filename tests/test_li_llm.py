"""OmniRouteLLM: every LlamaIndex method form routed, settled from exact usage, with fallbacks and budgets."""

from __future__ import annotations

import asyncio
import re

import pytest
from li_fakes import CHEAP, EXPENSIVE, ProviderError, UsageLLM, candidate, words
from llama_index.core import Settings
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.llms.mock import MockLLMWithNonyieldingChatStream
from llama_index.core.tools import FunctionTool

from omniroute_li import OmniRouteLLM
from shared_core import Budget, BudgetExceeded, Router, count_message_tokens, count_tokens
from shared_core.fallbacks import AllCandidatesFailed

QUESTION = "Which gas do plants absorb from the air for photosynthesis?"
#: The router's own count of the question's chat tokens (charged when a provider reports none).
QUESTION_TOKENS = count_message_tokens([{"role": "user", "content": QUESTION}])


def _messages() -> list[ChatMessage]:
    return [ChatMessage(role="user", content=QUESTION)]


def _pair(**expensive_options) -> tuple[UsageLLM, UsageLLM, OmniRouteLLM]:
    """A router over RouterBench's GPT-4 and Mistral-7B (real prices, priors), answered by fakes."""
    big = UsageLLM(label="big", **expensive_options)
    small = UsageLLM(label="small", reply="a short cheap answer")
    llm = OmniRouteLLM([candidate(EXPENSIVE, big), candidate(CHEAP, small)], budget=Budget(usd=5.0))
    return big, small, llm


async def _run(llm: OmniRouteLLM, form: str):
    """Call one method form; return every response it produced (one, or the stream's chunks)."""
    if form == "chat":
        return [llm.chat(_messages())]
    if form == "complete":
        return [llm.complete(QUESTION)]
    if form == "stream_chat":
        return list(llm.stream_chat(_messages()))
    if form == "stream_complete":
        return list(llm.stream_complete(QUESTION))
    if form == "achat":
        return [await llm.achat(_messages())]
    if form == "acomplete":
        return [await llm.acomplete(QUESTION)]
    if form == "astream_chat":
        return [c async for c in await llm.astream_chat(_messages())]
    return [c async for c in await llm.astream_complete(QUESTION)]


FORMS = ["chat", "complete", "stream_chat", "stream_complete", "achat", "acomplete", "astream_chat", "astream_complete"]


def _text(response) -> str:
    return response.text if hasattr(response, "text") else response.message.content


@pytest.mark.parametrize("form", FORMS)
async def test_every_form_routes_and_charges_the_reported_usage(form):
    big, small, llm = _pair()
    responses = await _run(llm, form)
    final = responses[-1]
    record = final.additional_kwargs["omniroute"]
    # Without a budget horizon λ = 0: the better model (GPT-4's prior 0.88 vs 0.58) is chosen.
    assert record["model"] == EXPENSIVE and big.calls == 1 and small.calls == 0
    assert _text(final) == big.reply
    prompt_tokens, completion_tokens = big.usage_log[-1]
    assert final.raw["usage"]["prompt_tokens"] == prompt_tokens == words(QUESTION)
    assert final.raw["usage"]["completion_tokens"] == completion_tokens == words(big.reply)
    expected = llm.router.candidate(EXPENSIVE).cost(prompt_tokens, completion_tokens)  # $10 / $30 per 1M
    assert record["actual_cost_usd"] == pytest.approx(expected, rel=1e-12)
    state = llm.router.budget_state("default")
    assert state.committed == pytest.approx(expected, rel=1e-12) and state.reserved == 0
    assert record["remaining_usd"] == pytest.approx(5.0 - expected)
    if form.startswith(("stream", "astream")):
        # Every chunk names the candidate; only the closing chunk (empty delta) carries the costs.
        assert "".join(c.delta for c in responses) == big.reply
        assert all(c.additional_kwargs["omniroute"]["model"] == EXPENSIVE for c in responses)
        costed = [("actual_cost_usd" in c.additional_kwargs["omniroute"]) for c in responses]
        assert costed == [False] * (len(responses) - 1) + [True]


async def test_a_candidate_without_usage_is_charged_by_counting_tokens():
    llm = OmniRouteLLM([candidate(CHEAP, MockLLM(max_tokens=7), supports_tools=False)], budget=Budget(usd=1.0))
    response = llm.complete(QUESTION)
    out = count_tokens(response.text)  # "text text ... text": 7 words
    usage = {"prompt_tokens": QUESTION_TOKENS, "completion_tokens": out, "total_tokens": QUESTION_TOKENS + out,
             "usage_source": "counted"}  # OmniRoute's own count, and it says so
    assert response.raw["usage"] == usage
    assert response.additional_kwargs["omniroute"]["input_tokens"] == QUESTION_TOKENS
    assert llm.router.budget_state("default").committed == pytest.approx(
        llm.router.candidate(CHEAP).cost(QUESTION_TOKENS, out)
    )


def test_metadata_promises_what_every_reachable_candidate_can_do():
    small_window = candidate(CHEAP, MockLLM(), supports_tools=False, context_window=8_192, max_output_tokens=512)
    tools = candidate(EXPENSIVE, UsageLLM(), context_window=128_000, max_output_tokens=4_096)
    llm = OmniRouteLLM([small_window, tools])
    meta = llm.metadata
    assert (meta.context_window, meta.num_output) == (8_192, 512)
    assert meta.is_function_calling_model and meta.is_chat_model
    pinned = OmniRouteLLM(router=llm.router, model=CHEAP).metadata
    assert (pinned.context_window, pinned.is_function_calling_model, pinned.model_name) == (8_192, False, CHEAP)


def test_construction_errors_name_the_problem():
    with pytest.raises(ValueError, match="supports_tools=False"):
        OmniRouteLLM([candidate(CHEAP, MockLLM())])  # MockLLM cannot call tools
    with pytest.raises(TypeError, match="must be a LlamaIndex LLM"):
        OmniRouteLLM([candidate(CHEAP, object(), supports_tools=False)])
    router = Router([candidate(CHEAP, MockLLM(), supports_tools=False)])
    with pytest.raises(ValueError, match="exactly one of"):
        OmniRouteLLM([candidate(CHEAP, MockLLM(), supports_tools=False)], router=router)
    with pytest.raises(KeyError, match="unknown candidate"):
        OmniRouteLLM(router=router, model="gpt-5")


async def _call(llm: OmniRouteLLM, form: str, argument):
    """Call one method form with `argument` as its messages or prompt, reading a stream to its end."""
    result = getattr(llm, form)(argument)
    if form.startswith("a"):
        result = await result
    if form.startswith("astream"):
        return [c async for c in result]
    return list(result) if form.startswith("stream") else result


def _untouched(llm: OmniRouteLLM, *fakes: UsageLLM) -> bool:
    """No candidate was called and the ledger was never asked for anything."""
    return all(f.calls == 0 for f in fakes) and llm.router.store.open_reservations() == 0 \
        and llm.router.budget_state("default") is None


CHAT_FORMS = [f for f in FORMS if "chat" in f]
COMPLETE_FORMS = [f for f in FORMS if "complete" in f]


@pytest.mark.parametrize("form", CHAT_FORMS)
@pytest.mark.parametrize(
    "messages, problem",
    [("hello", "takes a sequence of ChatMessage, got str; use {complete}() for a prompt string"),
     ([ChatMessage(role="user", content=QUESTION), 42], "messages[1] must be a ChatMessage, got int"),
     ([{"role": "user", "content": QUESTION}], "messages[0] must be a ChatMessage, got dict"),
     (ChatMessage(role="user", content=QUESTION), "got one ChatMessage: put it in a list"),
     (None, "takes a sequence of ChatMessage, got NoneType"),
     ({"role": "user", "content": QUESTION}, "takes a sequence of ChatMessage, got dict")],
)
async def test_chat_forms_refuse_what_is_not_a_sequence_of_chat_messages_before_routing(form, messages, problem):
    # A prompt string was read letter by letter deep in the call: "'str' object has no attribute 'role'".
    big, small, llm = _pair()
    with pytest.raises(TypeError, match=re.escape(problem.format(complete=form.replace("chat", "complete")))) as info:
        await _call(llm, form, messages)
    assert str(info.value).startswith(f"{form}() ")  # the call is named, async and stream forms alike
    assert _untouched(llm, big, small)


@pytest.mark.parametrize("form", CHAT_FORMS)
async def test_chat_forms_read_messages_from_any_iterable_once(form):
    # A generator was read twice before: routed on its messages, then sent to the candidate empty.
    big, small, llm = _pair()
    await _call(llm, form, (m for m in [ChatMessage(role="user", content=QUESTION)]))
    (prompt_words, _), = (big.usage_log or small.usage_log)
    assert prompt_words == len(QUESTION.split())


@pytest.mark.parametrize("form", COMPLETE_FORMS)
@pytest.mark.parametrize(
    "prompt, problem",
    [(None, "got NoneType"), (42, "got int"), (b"hello", "got bytes"),
     ([ChatMessage(role="user", content=QUESTION)], "got list; use {chat}() for a sequence of ChatMessage")],
)
async def test_completion_forms_refuse_a_prompt_that_is_not_a_string_before_routing(form, prompt, problem):
    # None was routed and charged as an empty prompt; 42 raised a RoutingError about messages[0] content.
    big, small, llm = _pair()
    with pytest.raises(TypeError, match=re.escape(problem.format(chat=form.replace("complete", "chat")))) as info:
        await _call(llm, form, prompt)
    assert str(info.value).startswith(f"{form}() takes a prompt string, got ")
    assert _untouched(llm, big, small)


@pytest.mark.parametrize(
    "arguments, problem",
    [({"user_msg": 42}, "user_msg must be a str or a ChatMessage, got int"),
     ({"chat_history": "hello"}, "chat_history must be a sequence of ChatMessage, got str"),
     ({"user_msg": QUESTION, "chat_history": [ChatMessage(role="user", content=QUESTION), None]},
      "chat_history[1] must be a ChatMessage, got NoneType")],
)
@pytest.mark.parametrize("with_tools", [True, False])
def test_a_tool_call_refuses_a_user_message_or_history_of_the_wrong_type(arguments, problem, with_tools):
    big, small, llm = _pair()
    tools = [FunctionTool.from_defaults(lambda city: city, name="lookup", description="Look up a city.")]
    with pytest.raises(TypeError, match=re.escape(problem)):
        llm.chat_with_tools(tools if with_tools else [], **arguments)
    assert _untouched(llm, big, small)


def test_sessions_are_charged_separately_and_models_can_be_pinned():
    big, small, llm = _pair()
    llm.router.set_budget("acme/agent-1", Budget(usd=1.0))
    llm.router.set_budget("acme/agent-2", Budget(usd=1.0))
    agent_1 = llm.for_session("acme/agent-1")
    agent_1.chat(_messages())
    llm.chat(_messages(), session="acme/agent-2", model=CHEAP)
    one, two, tenant = (llm.router.budget_state(s) for s in ("acme/agent-1", "acme/agent-2", "acme"))
    assert one.by_model == {EXPENSIVE: pytest.approx(big.usage_log[0][0] * 10e-6 + big.usage_log[0][1] * 30e-6)}
    assert two.by_model == {CHEAP: pytest.approx(sum(small.usage_log[0]) * 0.2e-6)}
    # budget= is each new session's budget: the default scope, never charged, has none yet
    assert tenant is None and llm.router.budget_state("default") is None


def test_a_budget_too_small_for_any_worst_case_refuses_and_holds_nothing():
    big, small, llm = _pair()
    llm.router.set_budget("broke", Budget(usd=1e-6))  # Mistral-7B's worst case: 4096 output tokens at $0.2/1M
    with pytest.raises(BudgetExceeded):
        llm.chat(_messages(), session="broke")
    with pytest.raises(BudgetExceeded):
        list(llm.stream_chat(_messages(), session="broke"))
    assert big.calls == small.calls == 0
    assert llm.router.store.open_reservations() == 0


@pytest.mark.parametrize("form", FORMS)
async def test_a_failing_candidate_falls_back_to_the_next_best(form):
    big, small, llm = _pair(failures=1)
    responses = await _run(llm, form)
    record = responses[-1].additional_kwargs["omniroute"]
    assert (record["model"], record["attempt"], record["failed"]) == (CHEAP, 1, [EXPENSIVE])
    assert big.calls == 1 and small.calls == 1
    state = llm.router.budget_state("default")
    assert state.by_model == {CHEAP: pytest.approx(record["actual_cost_usd"])} and state.reserved == 0


async def test_when_every_candidate_fails_each_error_surfaces_and_nothing_is_held():
    big, small, llm = _pair(failures=5)
    small.failures = 5
    with pytest.raises(AllCandidatesFailed, match="big.*small") as failed:
        await llm.achat(_messages())
    assert [type(e) for e in failed.value.errors] == [ProviderError, ProviderError]
    assert isinstance(failed.value.__cause__, ProviderError) and "small" in str(failed.value.__cause__)
    with pytest.raises(AllCandidatesFailed, match="small"):
        list(llm.stream_complete(QUESTION))
    state = llm.router.budget_state("default")
    assert state.committed == 0 and state.reserved == 0


async def test_a_stream_that_breaks_after_its_first_chunk_is_charged_for_what_it_produced():
    big, small, llm = _pair(fail_after_chunks=2)
    seen = []
    with pytest.raises(ProviderError, match="mid-stream"):
        async for chunk in await llm.astream_chat(_messages()):
            seen.append(chunk)
    assert len(seen) == 2 and small.calls == 0  # no fallback once the answer has started
    produced = count_tokens(seen[-1].message.content)  # the fake reports usage only at the end
    expected = llm.router.candidate(EXPENSIVE).cost(QUESTION_TOKENS, produced)
    state = llm.router.budget_state("default")
    assert state.committed == pytest.approx(expected) and state.reserved == 0


def test_closing_a_stream_early_charges_its_worst_case():
    # The reader stopped, not the provider, which may go on writing (and billing) up to the cap.
    big, small, llm = _pair()
    stream = llm.stream_chat(_messages())
    first = next(stream)
    stream.close()
    state = llm.router.budget_state("default")
    assert state.requests == 1 and state.reserved == 0
    record = first.additional_kwargs["omniroute"]
    assert state.committed == pytest.approx(record["reserved_usd"], abs=1e-12)
    assert state.committed > llm.router.candidate(EXPENSIVE).cost(QUESTION_TOKENS, count_tokens(first.message.content))


def test_an_empty_stream_is_charged_its_input_and_adds_no_chunk():
    llm = OmniRouteLLM([candidate(CHEAP, MockLLMWithNonyieldingChatStream(), supports_tools=False)])
    llm.router.set_budget("s", Budget(usd=1.0))
    assert list(llm.stream_chat(_messages(), session="s")) == []
    state = llm.router.budget_state("s")
    assert state.committed == pytest.approx(llm.router.candidate(CHEAP).cost(QUESTION_TOKENS, 0))
    assert state.requests == 1 and state.reserved == 0


@pytest.mark.parametrize("form", FORMS)
async def test_token_counting_handler_counts_each_routed_call_once(form):
    counter = TokenCountingHandler()
    big, small, llm = _pair()
    llm.callback_manager = CallbackManager([counter])
    await _run(llm, form)
    assert len(counter.llm_token_counts) == 1
    event = counter.llm_token_counts[0]
    assert (event.prompt_token_count, event.completion_token_count) == big.usage_log[-1]


def test_token_counting_through_settings_matches_calling_the_candidate_directly():
    counter = TokenCountingHandler()
    direct = MockLLM(max_tokens=5)
    routed = OmniRouteLLM([candidate(CHEAP, MockLLM(max_tokens=5), supports_tools=False)])
    old_llm, old_callbacks = Settings._llm, Settings._callback_manager
    try:
        Settings.callback_manager = CallbackManager([counter])
        direct.callback_manager = Settings.callback_manager
        Settings.llm = routed
        calls = (
            lambda m: m.chat(_messages()),
            lambda m: m.complete(QUESTION),
            lambda m: list(m.stream_chat(_messages())),
        )
        for call in calls:
            counter.reset_counts()
            call(direct)
            direct_events = len(counter.llm_token_counts)
            counter.reset_counts()
            call(Settings.llm)
            # MockLLM's chat runs through its complete (two events upstream); the router adds none.
            assert len(counter.llm_token_counts) == direct_events >= 1
    finally:
        Settings._llm, Settings._callback_manager = old_llm, old_callbacks


async def test_budget_holds_under_200_concurrent_achat_calls():
    # Answers take long enough that every decision is made while the first holds are still open: the
    # budget binds whatever the interleaving (with quick answers, money settled early can serve all 200).
    big = UsageLLM(label="big", delay_s=0.5)
    small = UsageLLM(label="small", delay_s=0.5, reply="a short cheap answer")
    cands = [candidate(EXPENSIVE, big, max_output_tokens=64), candidate(CHEAP, small, max_output_tokens=64)]
    llm = OmniRouteLLM(cands)
    worst = cands[0].worst_case_cost(40, 64)
    budget = 30 * worst  # room for about 30 GPT-4 calls at their worst case, not 200
    llm.router.set_budget("load", Budget(usd=budget))
    calls = (llm.achat(_messages(), session="load") for _ in range(200))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    answers = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert len(answers) + len(refused) == 200 and answers and refused
    state = llm.router.budget_state("load")
    assert state.committed <= budget and state.reserved == 0 and llm.router.store.open_reservations() == 0
    costs = [a.additional_kwargs["omniroute"]["actual_cost_usd"] for a in answers]
    assert all(c > 0 for c in costs)
    assert sum(costs) == pytest.approx(state.committed, rel=1e-9) and state.requests == len(answers)


def test_a_callback_manager_given_to_the_router_hears_its_calls_and_leaves_the_candidates_alone():
    own = CallbackManager([])
    big, small = UsageLLM(callback_manager=own), UsageLLM(callback_manager=own)
    OmniRouteLLM([candidate(EXPENSIVE, big), candidate(CHEAP, small)], callback_manager=None)
    assert big.callback_manager is own and small.callback_manager is own  # None: candidates keep theirs
    counter = TokenCountingHandler()
    llm = OmniRouteLLM(
        [candidate(EXPENSIVE, big), candidate(CHEAP, small)], callback_manager=CallbackManager([counter])
    )
    llm.chat(_messages())
    assert len(counter.llm_token_counts) == 1  # the router's handlers hear the call, through a per-call copy
    assert big.callback_manager is own and small.callback_manager is own


@pytest.mark.parametrize("form", FORMS)
async def test_max_tokens_set_on_the_llm_caps_every_call_that_names_none(form):
    """Found by a new user: ChatOmniRoute(max_tokens=...) worked, OmniRouteLLM(max_tokens=...) was a
    TypeError. The instance's cap is what a call without its own reserves and sends."""
    for cap in (64, 9):
        llm = OmniRouteLLM([candidate(CHEAP, MockLLM(), supports_tools=False)], budget=Budget(usd=5.0), max_tokens=cap)
        responses = await _run(llm, form)
        records = [r.additional_kwargs["omniroute"] for r in responses if "omniroute" in r.additional_kwargs]
        assert records and {r["max_output_tokens"] for r in records} == {cap}
    with pytest.raises(ValueError, match="max_tokens"):
        OmniRouteLLM([candidate(CHEAP, MockLLM(), supports_tools=False)], max_tokens=0)
