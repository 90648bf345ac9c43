"""`quantized`: transformers' own `QuantizedCache` as shipped, the library baseline for KV quantization.

transformers describes its cache as similar to KIVI (Liu et al., 2024, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache", arXiv:2402.02750), but it is not KIVI (`kivi` is): with the `quanto` backend
(optimum-quanto) keys and values are both quantized in groups of `q_group_size` consecutive elements along the head
dimension (per token, the library's default axis 0), asymmetric with a scale and shift per group; the first forward
quantizes every token it brings; later tokens collect in a full-precision residual, and when the residual reaches
`residual_length` tokens the whole cache is read back, joined with the residual and quantized again from scratch.

What this file changes in the library's layer, and why: a quanto tensor is a wrapper tensor subclass that reports
the shape and dtype of the tensor it stands for and refuses `copy.deepcopy`, so a layer holding one would be counted
at its unquantized size (kv_bytes and the peak both count the tensors a layer holds) and could not be snapshotted
after the context. `QuantoLayer` holds each quantized tensor as the plain tensors it is made of (packed codes,
scales, shifts: `_key_parts`, `_value_parts`) and rebuilds the quanto tensor around them, without copying, when the
library's `update` reads it; so what is counted is what is stored, and deepcopy copies plain tensors.
The backend package is optional: `pip install 'cachebench[quant]'`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from cachebench.method import KVMethod
from cachebench.models.anatomy import head_dim
from cachebench.params import MAX_TOKENS, param

INSTALL_HINT = "needs optimum-quanto: pip install 'cachebench[quant]'"


@dataclass(frozen=True)
class QuantizedParams:
    backend: str = param("quanto", "quantization library behind transformers' QuantizedCache", choices=("quanto",))
    nbits: int = param(4, "bits per quantized key and value element", choices=(2, 4))
    residual_length: int = param(128, "full-precision tokens collected before the cache is quantized again",
                                 low=0, high=MAX_TOKENS)
    q_group_size: int = param(64, "consecutive head-dimension elements sharing a scale and shift (must divide the "
                              "head dimension)", low=1, high=MAX_TOKENS)


def backend_available(backend: str) -> bool:
    """Whether the backend's package can be imported (without importing it)."""
    module = {"quanto": "optimum.quanto"}[backend]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (optimum) is missing
        return False


def flatten_tensor(tensor: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """A wrapper tensor subclass (a quanto QTensor and the packed codes inside it) as the plain tensors it is made of
    and a recipe to rebuild it (`unflatten_tensor`); a plain tensor is its own single leaf, recipe None."""
    if type(tensor) is torch.Tensor or not hasattr(type(tensor), "__tensor_flatten__"):
        return [tensor], None
    names, meta = tensor.__tensor_flatten__()
    leaves: list[torch.Tensor] = []
    children = []
    for name in names:
        inner, recipe = flatten_tensor(getattr(tensor, name))
        children.append((name, len(inner), recipe))
        leaves.extend(inner)
    return leaves, (type(tensor), meta, tuple(tensor.size()), tuple(tensor.stride()), tuple(children))


def unflatten_tensor(leaves: list[torch.Tensor], recipe: Any) -> torch.Tensor:
    """The tensor `flatten_tensor` took apart, rebuilt around the same leaves (no copy)."""
    if recipe is None:
        return leaves[0]
    cls, meta, size, stride, children = recipe
    inner, at = {}, 0
    for name, count, child in children:
        inner[name] = unflatten_tensor(leaves[at: at + count], child)
        at += count
    return cls.__tensor_unflatten__(inner, dict(meta), torch.Size(size), stride)


@functools.cache
def _quanto_layer_class() -> type:
    """transformers' quanto layer, storing its quantized keys and values as the plain tensors they are made of."""
    from transformers.cache_utils import QuantoQuantizedLayer

    class QuantoLayer(QuantoQuantizedLayer):
        """`_quantized_keys` / `_quantized_values` are properties: what the layer holds is `_key_parts` /
        `_value_parts`, lists of plain tensors (packed codes, scales, shifts) and a recipe to rebuild the quanto
        tensor around them when the library's `update` reads it."""

        @property
        def _quantized_keys(self) -> torch.Tensor | None:
            return None if self._key_parts is None else unflatten_tensor(self._key_parts, self._key_recipe)

        @_quantized_keys.setter
        def _quantized_keys(self, value: torch.Tensor | None) -> None:
            self._key_parts, self._key_recipe = (None, None) if value is None else flatten_tensor(value)

        @property
        def _quantized_values(self) -> torch.Tensor | None:
            return None if self._value_parts is None else unflatten_tensor(self._value_parts, self._value_recipe)

        @_quantized_values.setter
        def _quantized_values(self, value: torch.Tensor | None) -> None:
            self._value_parts, self._value_recipe = (None, None) if value is None else flatten_tensor(value)

    return QuantoLayer


class QuantizedCacheMethod(KVMethod):
    name = "quantized"
    summary = ("transformers' QuantizedCache (optimum-quanto): group-wise quantized keys and values plus a "
               "full-precision residual, the library baseline.")
    Params = QuantizedParams
    fixed_cache_while_decoding = False  # the residual is folded into the quantized part while decoding

    def check_config(self, config: Any) -> None:
        """The backend must be installed, and groups must not straddle tokens."""
        if not backend_available(self.params.backend):
            raise ValueError(INSTALL_HINT)
        dim = head_dim(config)
        if dim % self.params.q_group_size:
            raise ValueError(f"q_group_size {self.params.q_group_size} does not divide the head dimension {dim}")

    def new_cache(self, model: Any) -> Any:
        if not backend_available(self.params.backend):
            raise ValueError(INSTALL_HINT)
        from transformers import QuantizedCache

        p = self.params
        settings = {"nbits": p.nbits, "q_group_size": p.q_group_size, "residual_length": p.residual_length}
        cache = QuantizedCache(backend=p.backend, config=model.config, **settings)
        layer_class = _quanto_layer_class()
        cache.layers = [layer_class(**settings) for _ in cache.layers]
        return cache
