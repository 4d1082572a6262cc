"""LlamaIndex habits (issue 12): OmniRouteLLM pickles and copies, keeps callbacks per instance, honours
structured output, keeps the provider's raw response, settles closed async streams at once, and its
spend is tracked through LlamaIndex instrumentation."""

from __future__ import annotations

import copy
import logging
import pickle
from typing import Any

import pytest
from ledger_support import store_url
from li_fakes import CHEAP, EXPENSIVE, UsageLLM, candidate
from llama_index.core import Settings
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.callbacks.token_counting import get_tokens_from_response
from llama_index.core.extractors import KeywordExtractor
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms import LLM, ChatMessage, MockLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import Document, TextNode, TransformComponent
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai_like import OpenAILike
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from omniroute_li import LedgerNotShared, OmniRouteLLM, SpendTracker
from shared_core import Budget, Candidate, NoFeasibleCandidate, Router
from shared_core.stores import open_store

GPT, MINI = "gpt-4o-mini", "local-mini"
PRICES = {GPT: dict(input_price=0.15, output_price=0.6), MINI: dict(input_price=0.1, output_price=0.4)}
EXACT = 1e-9


@pytest.fixture
def billing(provider):
    for model, prices in PRICES.items():
        provider.configure(model, **prices)
    return provider


def real_candidates(provider, *, gpt_structured: bool = True) -> list[Candidate]:
    """OpenAI (gpt, the better prior) and OpenAILike (mini) clients talking to the local provider."""
    gpt = OpenAI(api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=10)
    mini = OpenAILike(api_base=provider.openai_url, api_key="test", model=MINI, is_chat_model=True,
                      is_function_calling_model=True, max_retries=0, timeout=10)
    return [
        Candidate(name="gpt", model=gpt, prior_quality=0.8, supports_structured_output=gpt_structured, **PRICES[GPT]),
        Candidate(name="mini", model=mini, prior_quality=0.6, **PRICES[MINI]),
    ]


def record(response) -> dict:
    return response.additional_kwargs["omniroute"]


def messages(text: str = "Say something.") -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


# ---------------------------------------------------------------------------------- 1. copies and pickles
class Summarise(TransformComponent):
    """A custom ingestion step that asks the LLM about each node (module level: workers import it)."""

    llm: LLM

    def __call__(self, nodes: list, **kwargs: Any) -> list:
        for node in nodes:
            node.metadata["summary"] = self.llm.complete(f"Summarise: {node.get_content()}").text
        return nodes


@pytest.fixture
def two_workers(monkeypatch):
    """IngestionPipeline lowers num_workers to the CPU count, and with one CPU it stays in this process."""
    import multiprocessing

    cpus = multiprocessing.cpu_count()
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: max(2, cpus))


def _removed_attributes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unpickleable attribute" in r.getMessage()]


def test_pickling_leaves_the_live_llm_whole_and_an_unpickled_copy_shares_its_router(caplog):
    big, small = UsageLLM(label="big"), UsageLLM(label="small")
    llm = OmniRouteLLM([candidate(EXPENSIVE, big), candidate(CHEAP, small)], budget=Budget(usd=1.0), session="s")
    fields = dict(llm.__dict__)
    with caplog.at_level(logging.WARNING):
        data = pickle.dumps(llm)
        extractor_data = pickle.dumps(KeywordExtractor(llm=llm, keywords=2))  # LlamaIndex pickles the field
    assert _removed_attributes(caplog) == []
    assert llm.__dict__ == fields and llm.router is fields["router"]  # nothing was deleted from the live object
    assert llm.complete("Still here?").additional_kwargs["omniroute"]["model"] == EXPENSIVE
    clone, extractor = pickle.loads(data), pickle.loads(extractor_data)
    # In this process the pickle names the live router: the copy charges the same ledger.
    assert clone.router is llm.router and extractor.llm.router is llm.router and clone.session == "s"
    clone.complete("From the copy.")
    state = llm.router.budget_state("s")
    assert state.requests == 2 and state.reserved == 0 and big.calls == 2


def test_deepcopy_shares_the_router_and_charges_the_same_ledger():
    counter = TokenCountingHandler()
    llm = OmniRouteLLM([candidate(CHEAP, UsageLLM(label="small"))], budget=Budget(usd=1.0),
                       callback_manager=CallbackManager([counter]))
    twin = copy.deepcopy(llm)
    assert twin is not llm and twin.router is llm.router and twin.callback_manager is llm.callback_manager
    twin.chat(messages())
    llm.chat(messages())
    state = llm.router.budget_state("default")
    assert state.requests == 2 and state.reserved == 0
    assert len(counter.llm_token_counts) == 2
    assert copy.deepcopy(KeywordExtractor(llm=llm)).llm.router is llm.router  # deep copies of components too


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_ingestion_pipeline_with_two_worker_processes_charges_the_shared_ledger(
    billing, tmp_path, kind, caplog, two_workers
):
    with store_url(kind, tmp_path) as url:
        llm = OmniRouteLLM(real_candidates(billing), budget=Budget(usd=1.0), store=url, session="ingest")
        old_llm = Settings._llm
        try:
            Settings.llm = llm
            pipeline = IngestionPipeline(transformations=[KeywordExtractor(llm=llm, keywords=2), Summarise(llm=llm)])
            texts = [TextNode(text=f"Passage {i} is about photosynthesis and light.") for i in range(4)]
            with caplog.at_level(logging.WARNING):
                nodes = pipeline.run(nodes=texts, num_workers=2)
            assert len(nodes) == 4 and all("summary" in n.metadata and "excerpt_keywords" in n.metadata for n in nodes)
            assert _removed_attributes(caplog) == []
            # Every worker call was reserved and settled in the one ledger, to the provider's bill.
            assert len(billing.requests) == 8
            state = llm.router.budget_state("ingest")
            assert state.requests == 8 and state.reserved == 0
            assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT)
            # The live objects still work.
            assert record(llm.chat(messages()))["model"] == "gpt"
            assert record(Settings.llm.complete("And Settings.llm?"))["model"] == "gpt"
            assert pipeline.transformations[0].llm is llm and llm.router.store.state("ingest").requests == 10
        finally:
            Settings._llm = old_llm
            llm.router.store.close()


@pytest.mark.slow
@pytest.mark.parametrize("extractor", ["custom", "SummaryExtractor"])
def test_a_memory_ledger_stays_in_its_process_and_the_worker_says_how_to_share_it(billing, two_workers, extractor):
    from llama_index.core.extractors import SummaryExtractor

    llm = OmniRouteLLM(real_candidates(billing), budget=Budget(usd=1.0))  # memory:// by default
    # LlamaIndex's async extractors run through its asyncio_run, which rewrites RuntimeErrors: the
    # worker's error must still be the one that says how to share the ledger.
    from llama_index.core.node_parser import SentenceSplitter

    steps = (
        [Summarise(llm=llm)]
        if extractor == "custom"
        else [SentenceSplitter(), SummaryExtractor(llm=llm, summaries=["self"])]
    )
    pipeline = IngestionPipeline(transformations=steps)
    with pytest.raises(LedgerNotShared, match=r"memory://.*sqlite:///.*redis://"):
        pipeline.run(documents=[Document(text="One."), Document(text="Two.")], num_workers=2)
    assert billing.requests == []  # nothing was spent outside the budget
    assert record(llm.complete("Here it works."))["model"] == "gpt"
    assert pipeline.transformations[-1].llm is llm


QUESTION = "Which gas do plants absorb from the air for photosynthesis?"


def _route_in_worker(data: bytes) -> tuple[dict, dict]:
    """In a spawned process: unpickle an OmniRouteLLM, ask its router, and answer through it."""
    llm = pickle.loads(data)
    decision = llm.router.decide(QUESTION, "probe")
    llm.router.release(decision)
    return decision.quality, record(llm.complete(QUESTION, session="worker"))


@pytest.mark.slow
def test_a_fitted_router_crosses_processes_with_its_predictions_and_its_ledger(train_sample, tmp_path):
    import multiprocessing

    from shared_core.fitting import fit_router

    fitted = fit_router(train_sample(150, 3), "knn")
    models = {c.name: MockLLM(max_tokens=5) for c in fitted.candidates}
    router = Router.load(fitted.save(tmp_path / "router").parent, models=models,
                         store=f"sqlite:///{tmp_path / 'ledger.db'}", default_budget=Budget(usd=1.0))
    for c in router.candidates:
        router.update_candidate(c.model_copy(update={"supports_tools": False}))
    llm = OmniRouteLLM(router=router)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        quality, worker_record = pool.apply(_route_in_worker, (pickle.dumps(llm),))
    decision = router.decide(QUESTION, "probe")
    router.release(decision)
    assert quality == decision.quality  # the k-NN predictor came along, not just the priors
    state = router.budget_state("worker")  # the worker's call is in this process's view of the ledger
    assert state.requests == 1 and state.committed == pytest.approx(worker_record["actual_cost_usd"], abs=EXACT)
    assert worker_record["model"] == decision.chosen


# ---------------------------------------------------------------------------------- 2. callbacks per call
async def test_each_instance_hears_only_its_own_calls_and_candidates_keep_their_callbacks(billing):
    cands = real_candidates(billing)
    own = [c.model.callback_manager for c in cands]
    first, second, third = TokenCountingHandler(), TokenCountingHandler(), TokenCountingHandler()
    one = OmniRouteLLM(cands, callback_manager=CallbackManager([first]))
    two = OmniRouteLLM(router=one.router, callback_manager=CallbackManager([second]))
    agent = one.for_session("agent")
    agent.callback_manager = CallbackManager([third])

    one.chat(messages(), model="mini")
    list(two.stream_chat(messages(), model="gpt"))
    await agent.acomplete("Complete this.")
    [c async for c in await two.astream_chat(messages())]

    bills = [(b.prompt_tokens, b.completion_tokens) for b in billing.requests]
    assert [(e.prompt_token_count, e.completion_token_count) for e in first.llm_token_counts] == bills[:1]
    assert [(e.prompt_token_count, e.completion_token_count) for e in second.llm_token_counts] == [bills[1], bills[3]]
    assert [(e.prompt_token_count, e.completion_token_count) for e in third.llm_token_counts] == bills[2:3]
    assert one.callback_manager.handlers == [first]  # for_session's copy got its own manager
    assert [c.model.callback_manager for c in one.router.candidates] == own
    assert not any(h in m.handlers for m in own for h in (first, second, third))


# ---------------------------------------------------------------------------------- 3. structured output
class Answer(BaseModel):
    """An answer and how sure the model is."""

    text: str
    confidence: float


async def test_structured_requests_go_only_to_candidates_with_structured_output(billing):
    llm = OmniRouteLLM(real_candidates(billing, gpt_structured=False), budget=Budget(usd=1.0))
    prompt = PromptTemplate("Answer {question}")
    assert isinstance(llm.structured_predict(Answer, prompt, question="why?"), Answer)
    assert isinstance(await llm.astructured_predict(Answer, prompt, question="why?"), Answer)
    assert isinstance(list(llm.stream_structured_predict(Answer, prompt, question="why?"))[-1], Answer)
    structured = llm.as_structured_llm(Answer)
    assert isinstance(structured.chat(messages("Why?")).raw, Answer)
    assert isinstance((await structured.achat(messages("Why?"))).raw, Answer)
    assert [b.model for b in billing.requests] == [MINI] * 5  # gpt, the better prior, cannot do it
    assert record(llm.chat(messages()))["model"] == "gpt"  # a plain chat still may go there
    with pytest.raises(NoFeasibleCandidate, match="structured"):
        llm.structured_predict(Answer, prompt, llm_kwargs={"model": "gpt"}, question="why?")
    assert llm.router.store.open_reservations() == 0


# ---------------------------------------------------------------------------------- 4. raw and usage
async def test_raw_is_the_providers_response_and_the_settled_usage_sits_beside_it(billing):
    counter = TokenCountingHandler()
    llm = OmniRouteLLM(real_candidates(billing), budget=Budget(usd=1.0), callback_manager=CallbackManager([counter]))
    responses = [llm.chat(messages()), list(llm.stream_chat(messages()))[-1],
                 await llm.acomplete("Complete this."), [c async for c in await llm.astream_complete("Stream.")][-1]]
    assert [type(r.raw) for r in responses] == [ChatCompletion, ChatCompletionChunk] * 2  # the provider's objects
    for response, bill in zip(responses, billing.requests, strict=True):
        usage = {k: response.additional_kwargs[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        assert usage == {"prompt_tokens": bill.prompt_tokens, "completion_tokens": bill.completion_tokens,
                         "total_tokens": bill.prompt_tokens + bill.completion_tokens}
        assert (record(response)["input_tokens"], record(response)["output_tokens"]) == (bill.prompt_tokens,
                                                                                         bill.completion_tokens)
        assert get_tokens_from_response(response) == (bill.prompt_tokens, bill.completion_tokens)
    counted = [(e.prompt_token_count, e.completion_token_count) for e in counter.llm_token_counts]
    assert counted == [(b.prompt_tokens, b.completion_tokens) for b in billing.requests]


def test_a_stream_without_provider_usage_is_read_exactly_from_additional_kwargs(billing):
    billing.configure(MINI, stream_usage=False, **PRICES[MINI])
    llm = OmniRouteLLM(real_candidates(billing)[1:])
    last = list(llm.stream_chat(messages()))[-1]
    assert isinstance(last.raw, ChatCompletionChunk) and last.raw.usage is None
    # LlamaIndex reads additional_kwargs when raw reports no usage: OmniRoute's own count is there.
    assert get_tokens_from_response(last) == (record(last)["input_tokens"], record(last)["output_tokens"])
    assert record(last)["output_tokens"] == billing.requests[0].completion_tokens


def test_a_dict_raw_gets_the_usage_merged_in_as_before():
    fake = UsageLLM(label="small")
    response = OmniRouteLLM([candidate(CHEAP, fake)]).chat(messages())
    assert response.raw["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}
    assert MockLLM().complete("x").raw is None
    assert OmniRouteLLM([candidate(CHEAP, MockLLM(), supports_tools=False)]).complete("x").raw["usage"][
        "usage_source"] == "counted"


# ---------------------------------------------------------------------------------- 5. closing async streams
@pytest.mark.parametrize("form", ["astream_chat", "astream_complete"])
async def test_aclose_settles_an_async_stream_at_once(form):
    fake = UsageLLM(label="small", reply="one two three four five six")
    llm = OmniRouteLLM([candidate(CHEAP, fake)], budget=Budget(usd=1.0))
    stream = await (llm.astream_chat(messages()) if form == "astream_chat" else llm.astream_complete("Go."))
    first = await stream.__anext__()
    assert llm.router.budget_state("default").reserved > 0
    await stream.aclose()
    state = llm.router.budget_state("default")
    assert state.reserved == 0 and state.requests == 1
    assert state.committed == pytest.approx(record(first)["reserved_usd"], abs=1e-12)  # the reader stopped: worst case


async def test_aclose_on_a_real_clients_stream_settles_at_once(billing):
    billing.configure(GPT, answer_tokens=400, chunk_delay_s=0.01, **PRICES[GPT])
    llm = OmniRouteLLM(real_candidates(billing), budget=Budget(usd=1.0))
    stream = await llm.astream_chat(messages())
    await stream.__anext__()
    await stream.aclose()
    state = llm.router.budget_state("default")
    assert state.reserved == 0 and state.requests == 1 and state.committed >= billing.bill_usd


# ---------------------------------------------------------------------------------- 6. spend tracking
@pytest.fixture
def tracker():
    tracker = SpendTracker()
    root = get_dispatcher()
    root.add_event_handler(tracker)
    try:
        yield tracker
    finally:
        root.event_handlers.remove(tracker)


async def test_spend_tracker_totals_each_session_and_model_like_the_ledger(billing, tracker):
    llm = OmniRouteLLM(real_candidates(billing), budget=Budget(usd=1.0))
    alice, bob = llm.for_session("acme/alice"), llm.for_session("acme/bob")
    answer = alice.chat(messages())
    list(alice.stream_chat(messages(), model="mini"))
    await bob.acomplete("Complete this.", model="mini")
    stream = await bob.astream_chat(messages())
    await stream.__anext__()
    await stream.aclose()  # abandoned: charged its worst case, and tracked as such
    tracker.track(answer)  # a response already heard through instrumentation counts once

    ledger = {s: llm.router.budget_state(s) for s in ("acme/alice", "acme/bob")}
    assert tracker.by_session() == {s: pytest.approx(st.committed, abs=EXACT) for s, st in ledger.items()}
    by_model: dict[str, float] = {}
    for st in ledger.values():
        for model, usd in st.by_model.items():
            by_model[model] = by_model.get(model, 0.0) + usd
    assert tracker.by_model() == {m: pytest.approx(usd, abs=EXACT) for m, usd in by_model.items()}
    assert tracker.calls == {("acme/alice", "gpt"): 1, ("acme/alice", "mini"): 1, ("acme/bob", "mini"): 1,
                             ("acme/bob", "gpt"): 1}
    assert tracker.total_usd == pytest.approx(sum(st.committed for st in ledger.values()), abs=EXACT)


def test_spend_tracker_adds_routed_responses_by_hand():
    tracker = SpendTracker()  # not registered: only what it is given
    llm = OmniRouteLLM([candidate(CHEAP, UsageLLM(label="small"))], budget=Budget(usd=1.0), session="s")
    response = llm.chat(messages())
    tracker.track(response)
    tracker.track(response)
    tracker.track(MockLLM().complete("not routed"))
    assert tracker.usd == {("s", CHEAP): pytest.approx(llm.router.budget_state("s").committed)}
    assert tracker.calls == {("s", CHEAP): 1}


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_worker_reopens_the_shared_ledger_with_its_settings(kind, tmp_path):
    """A worker process's ledger keeps the bounds it was opened with, not the defaults."""
    from omniroute_li.sharing import _ledger_recipe, _rebuild

    with store_url(kind, tmp_path) as url:
        store = open_store(url, retention_s=120.0, max_finished=7)
        router = Router([candidate(CHEAP, UsageLLM(label="small"))], store=store)
        rebuilt = _rebuild({"ledger": _ledger_recipe(store), "cls": Router, "candidates": list(router.candidates),
                            "settings": {}}).store
        assert (float(rebuilt._retention_s), rebuilt._max_finished) == (120.0, 7)
