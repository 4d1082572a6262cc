"""Any LlamaIndex `BaseEmbedding` as the router's prompt embedder (instead of the offline TF-IDF)."""

from __future__ import annotations

from llama_index.core.base.embeddings.base import BaseEmbedding

from shared_core.embed import FunctionEmbedder

__all__ = ["LlamaIndexEmbedder"]


class LlamaIndexEmbedder(FunctionEmbedder):
    """Embeds prompts with `embed_model.get_text_embedding_batch`, L2-normalised.

    Text (not query) embeddings on both sides: the router compares prompts with prompts. Pass it
    as `fit_router(data, embedder=LlamaIndexEmbedder(Settings.embed_model))`; a saved router
    keeps no embedding model, so give it again to `Router.load(dir, embedder=...)`.
    """

    def __init__(self, embed_model: BaseEmbedding) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise TypeError(f"expected a llama_index BaseEmbedding, got {type(embed_model).__name__}")
        super().__init__(embed_model.get_text_embedding_batch, name=type(embed_model).__name__)
        self.embed_model = embed_model
