"""Loading a model and its tokenizer from a model directory, a checkpoint or a run.

The one way the application opens what training wrote (``legollm generate``, ``chat``, the
pipeline's report). ``--model`` accepts a model directory (HF or lego: ``config.json`` +
``model.safetensors``), a lego-train checkpoint or a run directory
([`find_model_dir()`][lego.protocols.layout.find_model_dir]). The tokenizer comes from an
explicit spec, or from the model directory
([`find_tokenizer_file()`][lego.protocols.layout.find_tokenizer_file]).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lego.arch
from lego.protocols import ConfigError, Tokenizer, read_json
from lego.protocols.layout import (
    HF_TOKENIZER_FILE,
    LEGO_TOKENIZER_FILE,
    find_model_dir,
    find_tokenizer_file,
)
from lego.protocols.special_tokens import ENDOFTEXT
from lego.tokenize import RegexBPETokenizer
from lego.tokenize import load as load_tokenizer_file
from lego.tokenize.interop.resolve import resolve_tokenizer
from lego.train.distributed import pick_device

if TYPE_CHECKING:
    import torch

__all__ = ["load_model", "load_tokenizer", "default_eos_ids"]


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[lego.arch.DecoderLM, Path]:
    """Load the model of a model directory, checkpoint or run through ``lego.arch.from_hf``.

    Args:
        path: A model directory, a lego-train checkpoint or a run directory.
        dtype: Parameter dtype (``"float32"``, ``"bf16"``...); None keeps the stored one.
        device: Where to put the model: a torch device, or ``"auto"`` (CUDA, then Apple's
            MPS, then the CPU); None is the CPU.

    Returns:
        ``(model, model_dir)``, the model in eval mode.

    Raises:
        ConfigError: No model found at ``path``; a device this machine lacks.
    """
    model_dir = find_model_dir(path)
    if isinstance(device, str):
        device = pick_device(device)
    model = lego.arch.from_hf(model_dir, dtype=dtype, device=device)
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
        ConfigError: No tokenizer given or found (saying how to pass one).
    """
    if spec is not None:
        tokenizer: Tokenizer = resolve_tokenizer(spec)
        return tokenizer
    found = find_tokenizer_file(model_dir)
    if found is None:
        raise ConfigError(
            f"the model directory has no tokenizer ({LEGO_TOKENIZER_FILE} or {HF_TOKENIZER_FILE})",
            path=str(model_dir),
            hint="pass one with --tokenizer, e.g. --tokenizer tiktoken:gpt2, "
            "--tokenizer path/to/lego-tokenizer.json or --tokenizer hf:path/to/tokenizer.json",
        )
    if found.name == LEGO_TOKENIZER_FILE:
        loaded: Tokenizer = load_tokenizer_file(found)
        return loaded
    hf: Tokenizer = RegexBPETokenizer.from_hf(found)
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
