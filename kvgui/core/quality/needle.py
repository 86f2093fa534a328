"""The retrieval ("needle in a haystack") test: a fact hidden at several depths of a filler
text that fills the context, asked for at the end. Pass/fail per depth is what a user means by
"does the model still find things in a long context with this cache type".

Qt- and llama-free: the prompt is built here with a token counter the caller passes (the
measurement worker counts with the model's own tokenizer), so the prompt fills the chosen
context exactly as llama.cpp tokenizes it. Reproducible: the secrets come from a seeded
generator, the filler is fixed, and the answer is read greedily (argmax), so the same model,
settings and seed give the same prompts and the same answers run to run.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.5, 0.9)
DEFAULT_SEED = 1
ANSWER_TOKENS = 8  # greedy tokens read for the answer: a five-digit number and some slack
FACT = "The secret number is {secret}."
QUESTION = ("\n\nQuestion: What is the secret number mentioned in the text above?\n"
            "Answer: The secret number is")


@dataclass(frozen=True)
class NeedlePrompt:
    depth: float
    secret: str
    text: str
    fact_at: int  # character offset of the fact in ``text``


def secret_for(seed: int, index: int) -> str:
    """A five-digit number, different per probe, the same for the same seed."""
    return str(random.Random(f"kvgui-needle:{seed}:{index}").randint(10000, 99999))


def _sentence_start(text: str, at: int) -> int:
    """The start of the sentence or paragraph nearest before ``at`` (a fact dropped mid-word
    would test the tokenizer, not the cache)."""
    best = 0
    for m in re.finditer(r"(?<=[.!?:;])\s+|\n\n", text[:at]):
        best = m.end()
    return best


def _filler_of(filler: str, n_chars: int) -> str:
    if not filler.strip():
        raise ValueError("the filler text is empty")
    out = filler
    while len(out) < n_chars:
        out += "\n\n" + filler
    return out[:n_chars]


def build_prompt(filler: str, depth: float, secret: str, budget_tokens: int,
                 count_tokens: Callable[[str], int]) -> NeedlePrompt:
    """The longest prompt of ``filler`` (repeated if short) with the fact at ``depth`` of it
    and the question at the end that fits ``budget_tokens`` by ``count_tokens``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within 0..1, not {depth}")
    if budget_tokens < 64:
        raise ValueError(f"a retrieval prompt needs at least 64 tokens, not {budget_tokens}")
    fact = " " + FACT.format(secret=secret) + " "
    sample = _filler_of(filler, 8000)
    chars_per_token = len(sample) / max(1, count_tokens(sample))
    n_chars = int(budget_tokens * chars_per_token)
    for _ in range(16):
        body = _filler_of(filler, max(1, n_chars))
        cut = _sentence_start(body, int(len(body) * depth))
        text = body[:cut] + fact + body[cut:] + QUESTION
        n = count_tokens(text)
        if n <= budget_tokens:
            return NeedlePrompt(depth, secret, text, cut + 1)
        n_chars = int(n_chars * budget_tokens / n * 0.99) - 1
    raise ValueError(f"could not fit a retrieval prompt into {budget_tokens} tokens")


def prompts(filler: str, budget_tokens: int, count_tokens: Callable[[str], int],
            depths: Sequence[float] = DEFAULT_DEPTHS, seed: int = DEFAULT_SEED
            ) -> list[NeedlePrompt]:
    return [build_prompt(filler, d, secret_for(seed, i), budget_tokens, count_tokens)
            for i, d in enumerate(depths)]


def answer_matches(answer: str, secret: str) -> bool:
    """The first number in the answer is the secret (digits may come one token at a time,
    so spaces or commas between them are allowed: "4 8 2 1 3" or "48,213")."""
    m = re.search(r"\d[\d ,]*", answer)
    return m is not None and re.sub(r"[ ,]", "", m.group(0)) == secret
