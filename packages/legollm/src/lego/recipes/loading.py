"""Loading a model and its tokenizer from a model directory, a checkpoint or a run.

The one way the application opens what training wrote (``legollm generate``, ``chat``).
``--model`` accepts a model directory (HF or lego: ``config.json`` + ``model.safetensors``),
a lego-train checkpoint or a run directory
([`find_model_dir()`][lego.protocols.layout.find_model_dir]), or an adapter directory that
``legollm finetune`` / ``align dpo`` wrote with ``output: adapter`` (``adapter_config.json``,
``adapter_model.safetensors`` and ``base_model.json``; or the run that holds it as
``model/``): its base model is opened from the path ``base_model.json`` records, checked
against the SHA-256 recorded there, and the adapter merged in
([`load_adapter_dir()`][lego.recipes.loading.load_adapter_dir]). The tokenizer comes from
an explicit spec, or from the model directory
([`find_tokenizer_file()`][lego.protocols.layout.find_tokenizer_file]).

Everything is checked before the first token:

- a model directory inside a lego-train checkpoint is verified with lego-train's own check
  (the sizes and SHA-256s its ``trainer_state.json`` records for the files of ``model/``),
  the same check a resume makes: a damaged or altered checkpoint is refused, not loaded;
- every weight is checked for NaN and inf as it is read (``lego.arch.from_hf(...,
  check_finite=True)``), and integer weights are refused;
- the tokenizer must fit the model ([`check_tokenizer()`][lego.recipes.loading.check_tokenizer]),
  and the ``eos_token_id`` of ``config.json`` must be one of the model's ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import lego.arch
from lego.arch import parse_dtype
from lego.generate.streaming import check_tokenizer as check_model_tokenizer
from lego.peft.checkpoint import BASE_REFERENCE_NAME
from lego.peft.peft_format import ADAPTER_CONFIG_NAME
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    FormatError,
    LegoError,
    Tokenizer,
    read_json,
)
from lego.protocols.layout import (
    CHECKPOINTS_DIR,
    HF_TOKENIZER_FILE,
    LEGO_TOKENIZER_FILE,
    MODEL_DIR,
    find_model_dir,
    find_tokenizer_file,
)
from lego.protocols.special_tokens import ENDOFTEXT
from lego.tokenize import RegexBPETokenizer
from lego.tokenize import load as load_tokenizer_file
from lego.tokenize.interop.resolve import resolve_tokenizer
from lego.train.checkpoint import TRAINER_STATE_FILE, CheckpointManager
from lego.train.distributed import pick_device

if TYPE_CHECKING:
    import torch

__all__ = [
    "adapter_dir",
    "load_adapter_dir",
    "check_tokenizer",
    "default_eos_ids",
    "load_model",
    "load_tokenizer",
    "verify_checkpoint",
]


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
        ``(model, model_dir)``, the model in eval mode; for an adapter directory its base
        with the adapter merged in, and the adapter directory.

    Raises:
        ConfigError: No model found at ``path`` (a file where a folder belongs is named as
            such, an empty string is not taken for the working directory); a device this
            machine lacks.
        FormatError: A damaged checkpoint (a file missing, truncated or altered since it
            was written), a broken ``checkpoints/latest``, integer or non-finite weights.
    """
    if not str(path).strip():  # Path("") would be the working directory
        raise ConfigError(
            "--model is empty",
            key="--model",
            hint="pass a model directory, a checkpoint or a run directory",
        )
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"--model must be a folder, but {folder} is a file",
            path=str(folder),
            key="--model",
            hint=f"pass the folder that holds it ({folder.parent}), a checkpoint or a run "
            "directory",
        )
    adapter = adapter_dir(folder)
    if adapter is not None:
        return load_adapter_dir(adapter, dtype=dtype, device=device)
    model_dir = find_model_dir(folder)
    verify_checkpoint(model_dir, named=folder)
    if isinstance(device, str):
        device = pick_device(device)
    model = lego.arch.from_hf(model_dir, dtype=dtype, device=device, check_finite=True)
    model.train(False)
    return model, model_dir


def adapter_dir(folder: Path) -> Path | None:
    """The adapter directory ``folder`` is (or holds as ``model/``), if it is one.

    An adapter directory holds ``adapter_config.json`` and ``base_model.json`` (lego-peft's
    reference to the base model), and no ``config.json``.

    Args:
        folder: What ``--model`` named.

    Returns:
        The adapter directory, or None.

    Example:
        >>> adapter_dir(Path("no/such/folder")) is None
        True
    """
    for candidate in (folder, folder / MODEL_DIR):
        if (
            (candidate / ADAPTER_CONFIG_NAME).is_file()
            and (candidate / BASE_REFERENCE_NAME).is_file()
            and not (candidate / "config.json").exists()
        ):
            return candidate
    return None


def load_adapter_dir(
    folder: Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[lego.arch.DecoderLM, Path]:
    """Open an adapter directory: its base model, checked, with the adapter merged in.

    Args:
        folder: A directory with ``adapter_config.json``, ``adapter_model.safetensors`` and
            ``base_model.json`` (``legollm finetune ... output=adapter``).
        dtype: Parameter dtype of the merged model; None keeps the base's.
        device: As for [`load_model()`][lego.recipes.loading.load_model].

    Returns:
        ``(model, folder)``: the merged model in eval mode, and the adapter directory
        (which holds the tokenizer and ``generation_config.json``).

    Raises:
        ConfigError: ``base_model.json`` names no base, or one that does not exist.
        CompatibilityError: The base's weights are not the ones the adapter was trained on
            (another SHA-256), or the adapter does not fit the base.
        FormatError: A damaged file.
    """
    from lego.peft import load_adapter
    from lego.peft.checkpoint import base_weights_sha256, read_base_reference

    reference = read_base_reference(folder)
    named = reference["base_model_name_or_path"]
    if not named:
        raise ConfigError(
            "the adapter's base_model.json names no base model",
            path=str(folder / BASE_REFERENCE_NAME),
            hint="write the base model's directory into base_model_name_or_path",
        )
    base = Path(named)
    if not base.exists():
        raise ConfigError(
            f"the adapter's base model {base} does not exist (base_model.json)",
            path=str(folder / BASE_REFERENCE_NAME),
            hint="put the base model back at that path, or write its new path into "
            "base_model_name_or_path",
        )
    model, _ = load_model(base)  # as stored: the weights the adapter's SHA-256 was taken on
    adapted = load_adapter(model, folder)
    found = base_weights_sha256(adapted)
    if found != reference["sha256"]:
        raise CompatibilityError(
            f"the base model at {base} is not the one the adapter was trained on (weights "
            f"SHA-256 {found[:12]}..., recorded {reference['sha256'][:12]}...)",
            path=str(folder / BASE_REFERENCE_NAME),
            hint="load the adapter on its own base model (an adapter trained with QLoRA "
            "records its NF4 base: write such runs with output: merged)",
        )
    merged = adapted.merge_and_unload()
    assert isinstance(merged, lego.arch.DecoderLM)
    if isinstance(device, str):
        device = pick_device(device)
    merged.to(device=device, dtype=parse_dtype(dtype) if isinstance(dtype, str) else dtype)
    merged.train(False)
    return merged, folder


def verify_checkpoint(model_dir: Path, *, named: Path) -> None:
    """Verify the lego-train checkpoint a model directory belongs to, before it is read.

    The check is the one a resume makes (lego-train's
    [`CheckpointManager.read_state()`][lego.train.checkpoint.CheckpointManager.read_state]:
    ``trainer_state.json`` read and every file it lists present with its recorded size and
    SHA-256), so ``legollm generate`` never prints text from a checkpoint that ``resume``
    would refuse. A model directory named directly is a checkpoint's when it is a
    ``model/`` folder with ``trainer_state.json`` beside it; a plain model directory
    (``to_hf``, the Hub) has no record and is loaded as it is. A checkpoint or run named
    with ``--model`` must have its ``trainer_state.json`` (lego-train always writes one).

    Args:
        model_dir: From [`find_model_dir()`][lego.protocols.layout.find_model_dir].
        named: The path given (``--model``): the model directory, a checkpoint or a run.

    Raises:
        FormatError: The checkpoint's ``trainer_state.json`` is missing (a checkpoint or run
            named), damaged or foreign, or a file it lists is missing, truncated or altered.
    """
    if model_dir.name != MODEL_DIR:
        return  # not the model/ folder of a checkpoint
    checkpoint = model_dir.parent
    state_file = checkpoint / TRAINER_STATE_FILE
    through_checkpoint = model_dir != named
    hint = (
        "the checkpoint is damaged: generate from another one (checkpoints/step-NNNNNNNN), "
        "or from an intact copy of the model"
    )
    if not os.path.lexists(state_file):
        # a checkpoint (checkpoints/step-N/model) named through itself or its run; a
        # run's exported model/ (the pipeline's) is a plain model directory
        if through_checkpoint and checkpoint.parent.name == CHECKPOINTS_DIR:
            raise FormatError(
                f"the checkpoint holds {MODEL_DIR}/ but no {TRAINER_STATE_FILE}, so it is not a "
                "complete lego-train checkpoint and its files cannot be verified",
                path=str(state_file),
                hint=f"{hint}; to load the model directory unverified, pass it itself "
                f"(--model {model_dir})",
            )
        return  # a plain model directory: nothing records what it should hold
    manager = CheckpointManager(run_dir=checkpoint.parent.parent, keep_last=0)
    try:
        manager.read_state(checkpoint)
    except LegoError as exc:
        context = {k: v for k, v in exc.context.items() if k != "hint"}
        raise FormatError(exc.message, hint=hint, **context) from None


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


def check_tokenizer(
    tokenizer: Tokenizer, model: lego.arch.DecoderLM, *, spec: str | None, model_dir: Path
) -> None:
    """Compare the tokenizer's vocabulary with the model's before the first token.

    lego-generate's [`check_tokenizer()`][lego.generate.streaming.check_tokenizer] refuses a
    tokenizer with more ids than the model. One with fewer is the model's own when it comes
    from the model directory (a vocabulary padded past the tokenizer's, as lego-train's
    ``model.overrides.vocab_size`` or Qwen 3 make: the ids the tokenizer lacks are never
    generated); given with ``--tokenizer`` it is another one (its ids would mean other
    tokens, and the model would sample ids it cannot decode), refused here.

    Args:
        tokenizer: The loaded tokenizer.
        model: The loaded model.
        spec: The ``--tokenizer`` spec, or None when the tokenizer is the model directory's.
        model_dir: The model directory, for messages.

    Raises:
        CompatibilityError: The tokenizer does not fit the model (both sizes named).
    """
    try:
        smaller = check_model_tokenizer(model, tokenizer)
    except CompatibilityError as exc:
        where = find_tokenizer_file(model_dir) if spec is None else None
        key = "--tokenizer" if spec is not None else None
        raise CompatibilityError(
            exc.message, path=str(where or model_dir), key=key, hint=exc.hint
        ) from None
    if smaller is None or spec is None:
        return
    raise CompatibilityError(
        f"the tokenizer has {smaller} ids but the model's vocabulary {model.config.vocab_size}: "
        "it is not the tokenizer this model was trained with",
        path=str(model_dir),
        key="--tokenizer",
        hint="pass the tokenizer the model was trained with (or leave --tokenizer out to use "
        "the one saved with the model)",
    )


def default_eos_ids(
    model_dir: Path, tokenizer: Tokenizer, *, vocab_size: int | None = None
) -> list[int]:
    """The end-of-sequence ids for plain generation.

    ``eos_token_id`` of the model's ``config.json`` (an int or a list; for an adapter
    directory, which has none, its ``generation_config.json``) when set, else the
    tokenizer's ``<|endoftext|>`` when it has one, else none.

    Args:
        model_dir: The model directory.
        tokenizer: The tokenizer.
        vocab_size: The model's vocabulary size: ``config.json``'s ids must be below it.

    Returns:
        The ids (possibly empty).

    Raises:
        ConfigError: ``config.json``'s ``eos_token_id`` is not one of the model's ids.
    """
    file = model_dir / "config.json"
    if not file.is_file() and (model_dir / "generation_config.json").is_file():
        file = model_dir / "generation_config.json"  # an adapter directory's stop tokens
    config = read_json(file, what="a model configuration")
    value = config.get("eos_token_id") if isinstance(config, dict) else None
    ids: list[int] = []
    if isinstance(value, int) and not isinstance(value, bool):
        ids = [value]
    elif isinstance(value, list) and all(isinstance(v, int) for v in value) and value:
        ids = [int(v) for v in value]
    for eos in ids:
        if eos < 0 or (vocab_size is not None and eos >= vocab_size):
            raise ConfigError(
                f"config.json's eos_token_id {eos} is not one of the model's "
                f"{vocab_size} ids, so generation could never stop on it",
                path=str(file),
                key="eos_token_id",
                hint="fix eos_token_id in config.json (or remove it to stop on the "
                "tokenizer's <|endoftext|>)",
            )
    if ids:
        return ids
    if ENDOFTEXT in tokenizer.special_tokens:
        return [tokenizer.special_tokens[ENDOFTEXT]]
    return []
