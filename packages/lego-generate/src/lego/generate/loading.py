"""Loading a model and its tokenizer for the command line (lego-arch and lego-tokenize).

These are recipes: they import lego-arch and lego-tokenize lazily, from the ``recipes`` extra
(``pip install "lego-generate[recipes]"``); a missing one is a
[`ConfigError`][lego.protocols.ConfigError] naming the package to install.

``--model`` accepts a model directory (HF or lego: ``config.json`` + ``model.safetensors``),
a lego-train checkpoint or a run directory
([`find_model_dir()`][lego.protocols.layout.find_model_dir]). The tokenizer comes from an
explicit spec, or from the model directory
([`find_tokenizer_file()`][lego.protocols.layout.find_tokenizer_file]).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lego.protocols import ConfigError, Tokenizer, import_optional, read_json
from lego.protocols.layout import (
    HF_TOKENIZER_FILE,
    LEGO_TOKENIZER_FILE,
    find_model_dir,
    find_tokenizer_file,
)
from lego.protocols.special_tokens import ENDOFTEXT

if TYPE_CHECKING:
    import torch

    from lego.protocols import CausalLM

__all__ = ["load_model", "load_tokenizer", "default_eos_ids"]


def _recipe_import(module: str, package: str) -> ModuleType:
    """Import a sibling brick of the ``recipes`` extra (a ConfigError names what to install)."""
    return import_optional(
        module,
        needed_by="the lego-generate command line",
        install=f'"lego-generate[recipes]" ({package})',
    )


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[CausalLM, Path]:
    """Load the model of a model directory, checkpoint or run through ``lego.arch.from_hf``.

    Args:
        path: A model directory, a lego-train checkpoint or a run directory.
        dtype: Parameter dtype (``"float32"``, ``"bf16"``...); None keeps the stored one.
        device: Where to put the model.

    Returns:
        ``(model, model_dir)``, the model in eval mode.

    Raises:
        ConfigError: No model found at ``path`` or lego-arch is not installed.
    """
    arch = _recipe_import("lego.arch", "lego-arch")
    model_dir = find_model_dir(path)
    model: Any = arch.from_hf(model_dir, dtype=dtype, device=device)
    model.train(False)
    return model, model_dir


def load_tokenizer(spec: str | None, model_dir: Path) -> Tokenizer:
    """Load the tokenizer named by ``spec``, or the one stored in ``model_dir``.

    Args:
        spec: A tokenizer spec for ``lego.tokenize.resolve_tokenizer`` (a lego tokenizer
            file, ``tiktoken:gpt2``, ``hf:tokenizer.json``, ``gpt2:FOLDER``), or None.
        model_dir: The model directory to look in when ``spec`` is None.

    Returns:
        The tokenizer.

    Raises:
        ConfigError: No tokenizer given or found (saying how to pass one), or lego-tokenize
            is not installed.
    """
    _recipe_import("lego.tokenize", "lego-tokenize")
    if spec is not None:
        resolve = _recipe_import("lego.tokenize.interop.resolve", "lego-tokenize")
        tokenizer: Tokenizer = resolve.resolve_tokenizer(spec)
        return tokenizer
    found = find_tokenizer_file(model_dir)
    if found is None:
        raise ConfigError(
            f"the model directory has no tokenizer ({LEGO_TOKENIZER_FILE} or {HF_TOKENIZER_FILE})",
            path=str(model_dir),
            hint="pass one with --tokenizer, e.g. --tokenizer tiktoken:gpt2, "
            "--tokenizer path/to/lego-tokenizer.json or --tokenizer hf:path/to/tokenizer.json",
        )
    tokenize: Any = importlib.import_module("lego.tokenize")
    if found.name == LEGO_TOKENIZER_FILE:
        loaded: Tokenizer = tokenize.load(found)
        return loaded
    hf: Tokenizer = tokenize.RegexBPETokenizer.from_hf(found)
    return hf


def default_eos_ids(model_dir: Path, tokenizer: Tokenizer) -> list[int]:
    """The end-of-sequence ids for plain generation.

    ``eos_token_id`` of the model's ``config.json`` (an int or a list) when set, else the
    tokenizer's ``<|endoftext|>`` when it has one, else none.

    Args:
        model_dir: The model directory.
        tokenizer: The tokenizer.

    Returns:
        The ids (possibly empty).
    """
    config = read_json(model_dir / "config.json", what="a model configuration")
    value = config.get("eos_token_id") if isinstance(config, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value) and value:
        return [int(v) for v in value]
    if ENDOFTEXT in tokenizer.special_tokens:
        return [tokenizer.special_tokens[ENDOFTEXT]]
    return []
