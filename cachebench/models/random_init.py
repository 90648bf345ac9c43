"""Random-weight models of real shapes (`random:<preset|config.json>`), for time and memory measurement only.

The parameter count is taken on the meta device, so a shape that cannot fit is refused before a byte is
allocated. Random models use the embedded tokenizer: its ids are valid in every preset's larger vocabulary.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
import torch

from cachebench.errors import UsageError, unknown_name

_HEADROOM = 1.10  # activations, allocator slack and the KV cache of a short run
# shape fields that must be positive integers when a config sets them (transformers fails deep inside otherwise)
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "max_position_embeddings")
MAX_LAYERS = 1024  # far above any real model; building a deeper shell on the meta device alone takes minutes


def preset_names() -> list[str]:
    folder = resources.files("cachebench.models") / "presets"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _read_config(spec: str) -> dict[str, Any]:
    path = Path(spec).expanduser()
    if spec.endswith(".json") or path.exists():
        if not path.is_file():
            raise UsageError(f"random model config not found: {spec}")
        try:
            return json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"random model config {spec} is not readable JSON: {exc}") from None
    if spec not in preset_names():
        raise unknown_name("random-model preset", spec, preset_names())
    text = (resources.files("cachebench.models") / "presets" / f"{spec}.json").read_text()
    return json.loads(text)


def _positive_int(spec: str, name: str, value: Any) -> None:
    """A size or count as an int >= 1 (JSON's 4096.0 or "4096" would fail deep inside transformers)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"random model config {spec}: {name} must be a positive integer, got {value!r}")


def check_shape(spec: str, raw: dict[str, Any]) -> None:
    """Refuse, in one line, a shape transformers cannot build: a non-positive or non-integer size, a layer count
    no model has, heads that do not divide the hidden size or each other."""
    for name in SHAPE_FIELDS:
        if raw.get(name) is not None:
            _positive_int(spec, name, raw[name])
    layers = raw.get("num_hidden_layers")
    if layers is not None and layers > MAX_LAYERS:
        raise UsageError(f"random model config {spec}: num_hidden_layers {layers} is more than {MAX_LAYERS}")
    heads, kv_heads = raw.get("num_attention_heads"), raw.get("num_key_value_heads")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise UsageError(f"random model config {spec}: num_attention_heads {heads} is not a multiple of "
                         f"num_key_value_heads {kv_heads}")
    hidden = raw.get("hidden_size")
    if raw.get("head_dim") is None and heads is not None and hidden is not None and hidden % heads:
        raise UsageError(f"random model config {spec}: hidden_size {hidden} is not a multiple of "
                         f"num_attention_heads {heads} (or set head_dim)")


def read_config(spec: str) -> dict[str, Any]:
    """The raw config of a preset name or a config.json path, checked to be an object of a buildable shape."""
    raw = _read_config(spec)
    if not isinstance(raw, dict):
        raise UsageError(f"random model config {spec}: expected a JSON object, got {type(raw).__name__}")
    check_shape(spec, raw)
    return raw


def build_config(spec: str) -> Any:
    """A transformers config from a preset name or a config.json path (its shape checked before transformers is
    imported, which takes seconds)."""
    raw = {k: v for k, v in read_config(spec).items() if not k.startswith("_")}
    model_type = raw.pop("model_type", None)
    if not model_type or not isinstance(model_type, str):
        raise UsageError(f"random model config {spec} has no model_type")
    _check_model_type(spec, model_type)
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"random model config {spec}: {_first_line(exc)}") from None


def _check_model_type(spec: str, model_type: str) -> None:
    """An unknown model_type, with the closest known ones: transformers' own message lists all of them (10 kB)."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else " (e.g. 'llama', 'qwen2')"
        raise UsageError(f"random model config {spec}: unknown model_type {model_type!r}{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def parameter_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes the weights will take, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # whatever transformers rejects in a shape the user wrote is bad input, not a crash
        raise UsageError(f"random model config of model_type {config.model_type!r} cannot be built: "
                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    count = sum(p.numel() for p in shell.parameters())
    return count * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def check_fits(spec: str, config: Any, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, in one line, a shape whose weights would not fit the device's free memory."""
    need = parameter_bytes(config, dtype)
    have = available_bytes(device)
    if need * _HEADROOM > have:
        dtype_name = str(dtype).removeprefix("torch.")
        raise UsageError(
            f"random:{spec} in {dtype_name} needs {need / 2**30:.1f} GiB for its weights alone; "
            f"{device.type} has {have / 2**30:.1f} GiB available (try a smaller --dtype or another device)"
        )


def build_random_model(config: Any, dtype: torch.dtype, device: torch.device, attn_impl: str) -> Any:
    """Allocate the model directly on the device with random weights."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = attn_impl
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_impl)
    return model
