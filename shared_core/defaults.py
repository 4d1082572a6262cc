"""Bundled defaults for the offline demo: RouterBench's models, prices and training-split priors."""

from __future__ import annotations

from .candidates import Candidate
from .data import ROUTERBENCH_PRICES

__all__ = ["default_candidates", "DEMO_PROMPTS"]

# Mean accuracy on the RouterBench subset's training split (ARC-Challenge, Winogrande, MBPP).
_PRIORS = {
    "gpt-4-1106-preview": 0.880, "zero-one-ai/Yi-34B-Chat": 0.771, "mistralai/mixtral-8x7b-chat": 0.739,
    "gpt-3.5-turbo-1106": 0.724, "claude-v1": 0.723, "claude-instant-v1": 0.669,
    "meta/llama-2-70b-chat": 0.615, "meta/code-llama-instruct-34b-chat": 0.610,
    "mistralai/mistral-7b-chat": 0.581, "WizardLM/WizardLM-13B-V1.2": 0.568, "claude-v2": 0.544,
}


def default_candidates(max_output_tokens: int = 1024) -> list[Candidate]:
    """RouterBench's eleven models with their real prices and prior accuracies."""
    return [
        Candidate(name=m, input_price=p_in, output_price=p_out, prior_quality=_PRIORS[m],
                  max_output_tokens=max_output_tokens)
        for m, (p_in, p_out) in ROUTERBENCH_PRICES.items()
    ]


DEMO_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number using memoisation.",
    "Which gas do plants absorb from the atmosphere for photosynthesis?\n"
    "A) oxygen\nB) carbon dioxide\nC) nitrogen\nD) helium\nAnswer:",
    "The trophy doesn't fit into the brown suitcase because the _ is too large. "
    "Option1: trophy. Option2: suitcase. Answer:",
    "Summarise the causes of the French Revolution in three sentences.",
    "Write a function to check whether a string is a palindrome, ignoring case and punctuation.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "Translate 'Where is the nearest library?' into Spanish and German.",
    "Explain the difference between a process and a thread to a new programmer.",
]
