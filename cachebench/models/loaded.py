"""The loaded model as the runner sees it: network, tokenizer, and what result rows record about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM, in eval mode on `device`
    tokenizer: Any
    name: str  # recorded in rows as `model`
    weights: str  # "pretrained" or "random" (random weights measure time and memory, never quality)
    dtype: torch.dtype
    device: torch.device
    attn_impl: str
    max_context: int  # positions the model was trained for
    eos_token_ids: tuple[int, ...]

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")
