"""Any LangChain `Embeddings` as the router's prompt embedder (instead of the offline TF-IDF)."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from shared_core.embed import FunctionEmbedder

__all__ = ["LangChainEmbedder"]


class LangChainEmbedder(FunctionEmbedder):
    """Embeds prompts with `embeddings.embed_documents`, L2-normalised.

    Training prompts and routed prompts are both documents here: the router compares prompts
    with prompts, so the query/document asymmetry some models have does not apply. Pass it as
    `fit_router(data, embedder=LangChainEmbedder(OpenAIEmbeddings()))`; a saved router keeps no
    embedding model, so give it again to `Router.load(dir, embedder=...)`.
    """

    def __init__(self, embeddings: Embeddings) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TypeError(f"expected a langchain_core Embeddings, got {type(embeddings).__name__}")
        super().__init__(embeddings.embed_documents, name=type(embeddings).__name__)
        self.embeddings = embeddings
