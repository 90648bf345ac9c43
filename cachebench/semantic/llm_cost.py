"""The cost C of answering a request with the LLM, per category: measured with a real model, or set by the user.

A semantic cache pays for itself when hits save more LLM time than lookups cost, so the cost model needs C in
the same units as the measured lookup cost. Measured C is the median wall time of greedy generation (prefill,
then decoding up to the task's token budget or the end-of-sequence token) over a few of the category's prompts,
through the same engine the KV track measures with.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import torch

from cachebench.engine.chat import ChatFormat
from cachebench.engine.measure import Clock
from cachebench.engine.runner import warm_up
from cachebench.engine.session import KVSession
from cachebench.errors import UsageError
from cachebench.method import KVMethod
from cachebench.models.loaded import LoadedModel
from cachebench.semantic.stream import Request

SAMPLES_PER_CATEGORY = 3


def parse_llm_cost(text: str | None) -> dict[str, float]:
    """`--llm-cost-ms`: "800" (every category; key "*") or "code=900,factual=400"."""
    if not text:
        return {}
    costs: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        try:
            cost = float(value)
        except ValueError:
            raise UsageError(f"--llm-cost-ms {text!r}: expected milliseconds, or category=ms pairs") from None
        if cost <= 0:
            raise UsageError(f"--llm-cost-ms {text!r}: costs must be positive")
        costs[name.strip() or "*"] = cost
    return costs


def generation_ms(model: LoadedModel, prompt: str, max_new_tokens: int) -> float:
    """Milliseconds to answer one prompt greedily with the model's chat template."""
    chat = ChatFormat(model.tokenizer)
    ids = model.tokenizer(chat.context("") + chat.query(prompt), add_special_tokens=False)["input_ids"]
    clock = Clock(model.device)
    session = KVSession(model, KVMethod(None), None)
    with torch.inference_mode():
        start = clock.now_ms()
        logits = session.forward(ids, "context")
        for _ in range(max_new_tokens - 1):
            token = int(logits.argmax())
            if token in model.eos_token_ids:
                break
            logits = session.forward([token], "decode")
        return clock.now_ms() - start


def measure_llm_cost(model: LoadedModel, requests: list[Request], categories: list[str], max_new_tokens: int
                     ) -> dict[str, float]:
    """Median generation time of a few prompts of each category."""
    prompts: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        if request.category in categories and len(prompts[request.category]) < SAMPLES_PER_CATEGORY:
            prompts[request.category].append(request.prompt)
    warm_up(model)
    return {category: statistics.median(generation_ms(model, p, max_new_tokens) for p in texts)
            for category, texts in prompts.items()}
