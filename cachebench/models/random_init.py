"""Random-weight models of real shapes (`random:<preset|config.json>`), for time and memory measurement only.

The parameter count is taken on the meta device, so a shape that cannot fit is refused before a byte is
allocated. Random models use the embedded tokenizer: its ids are valid in every preset's larger vocabulary.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
import torch

from cachebench.errors import UsageError, unknown_name

_HEADROOM = 1.10  # activations, allocator slack and the KV cache of a short run


def preset_names() -> list[str]:
    folder = resources.files("cachebench.models") / "presets"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _read_config(spec: str) -> dict[str, Any]:
    path = Path(spec).expanduser()
    if spec.endswith(".json") or path.exists():
        if not path.is_file():
            raise UsageError(f"random model config not found: {spec}")
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"random model config {spec} is not readable JSON: {exc}") from None
    if spec not in preset_names():
        raise unknown_name("random-model preset", spec, preset_names())
    text = (resources.files("cachebench.models") / "presets" / f"{spec}.json").read_text()
    return json.loads(text)


def build_config(spec: str) -> Any:
    """A transformers config from a preset name or a config.json path."""
    from transformers import AutoConfig

    raw = {k: v for k, v in _read_config(spec).items() if not k.startswith("_")}
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise UsageError(f"random model config {spec} has no model_type")
    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"random model config {spec}: {exc}") from None


def parameter_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes the weights will take, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
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
