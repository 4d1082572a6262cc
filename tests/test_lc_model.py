"""Building ChatOmniRoute: from candidates or a fitted router, with clear errors for what cannot work."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from lc_fakes import FakeToolChatModel, two_candidates

from omniroute_lc import ChatOmniRoute
from shared_core import Budget, Candidate, Router
from shared_core.fitting import fit_router


def test_needs_candidates_or_a_router():
    with pytest.raises(ValueError, match="needs candidates="):
        ChatOmniRoute()


def test_every_candidate_needs_a_chat_model():
    bare = Candidate(name="bare", input_price=1, output_price=2, prior_quality=0.5)
    with pytest.raises(ValueError, match=r"candidates \['bare'\] have no chat model"):
        ChatOmniRoute(candidates=[bare])


def test_settings_of_a_given_router_must_agree():
    router = Router(two_candidates(), default_budget=Budget(usd=1.0))
    with pytest.raises(ValueError, match="budget= differs"):
        ChatOmniRoute(router=router, budget=Budget(usd=2.0))
    with pytest.raises(ValueError, match="differ from the router's"):
        ChatOmniRoute(router=router, candidates=two_candidates()[:1])
    assert ChatOmniRoute(router=router, budget=Budget(usd=1.0)).router is router


def test_a_router_fitted_on_routerbench_routes_to_models_given_separately(routerbench):
    train = routerbench.subset("train")
    router = fit_router(train, "prior")  # candidates priced from the dataset, without chat models
    models = [c.model_copy(update={"model": FakeToolChatModel(model_name=c.name)}) for c in router.candidates]
    chat = ChatOmniRoute(router=router, candidates=models)

    info = chat.invoke("Which planet is largest?").response_metadata["omniroute"]
    # Without a budget λ is 0: the model with the best mean accuracy on the training split wins.
    assert info["model"] == train.models[int(np.nanargmax(np.nanmean(train.quality, axis=0)))] == "gpt-4-1106-preview"
    assert info["predicted_quality"] == pytest.approx(np.nanmean(train.quality[:, train.models.index(info["model"])]))


def test_model_override_forces_a_candidate_and_names_the_known_ones():
    chat = ChatOmniRoute(candidates=two_candidates())
    assert chat.invoke("Hi", model="gpt-4o-mini").response_metadata["model_name"] == "gpt-4o-mini"
    with pytest.raises(KeyError, match=r"unknown candidate 'gpt-5'; candidates are \['gpt-4o-mini', 'gpt-4o'\]"):
        chat.invoke("Hi", model="gpt-5")


def test_for_session_copies_share_the_router():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    agent = chat.for_session("acme/agent-7")
    assert agent.router is chat.router and chat.session is None
    assert isinstance(agent.invoke("Hi"), AIMessage)
    assert chat.router.budget_state("acme/agent-7").requests == 1


@pytest.mark.parametrize(
    "messages, problem",
    [(["Hi"], r"messages\[0\] must be a LangChain BaseMessage, got str"),
     ([HumanMessage("Hi"), 42], r"messages\[1\] must be a LangChain BaseMessage, got int"),
     ("Hi", "expected a sequence of LangChain messages, got a single str"),
     (None, "expected a sequence of LangChain messages, got NoneType")],
)
def test_counting_tokens_of_what_is_not_a_message_names_the_item(messages, problem):
    # LangChain converts a call's input itself, but not what trim_messages or a user hands this counter:
    # it failed in the adapter with "'str' object has no attribute 'type'".
    chat = ChatOmniRoute(candidates=two_candidates())
    with pytest.raises(TypeError, match=problem):
        chat.get_num_tokens_from_messages(messages)
