"""Supervised fine-tuning on lego-train's Trainer: loss on the completions only.

Data: JSON Lines (or in-memory dictionaries) in TRL's forms, one example per line:

- ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` (conversational
  language modelling: every assistant message trained, or only the last);
- ``{"prompt": ..., "completion": ...}``: strings, or lists of messages (conversational
  prompt / completion: only the completion's messages trained);
- ``{"instruction": ..., "input": ..., "output": ...}`` (Alpaca: a user and an assistant
  message).

Each example is rendered with the model's chat template (lego-protocols' ``"chatml"``,
``"llama3"`` or any [`ChatTemplate`][lego.protocols.chat.ChatTemplate]) and tokenized by
lego-data's ``encode_segments``: the completion's content and the end-of-turn token that
closes it are trained, everything else masked (``-100``). With ``template="none"`` string
prompt / completion pairs are plain text (TRL's non-conversational form): the completion
and an appended ``eos_token`` are trained.

Lengths: an example longer than ``max_length`` keeps its end. The prompt is cut from the
left (counted in ``truncated`` and logged); the completion and its end token are never cut.
An example whose trained part alone does not fit beside one prompt token is dropped
(counted) or refused (``on_overflow="error"``). An empty completion (nothing but the end
token to train) is refused or skipped (``empty_completion``).

Packing (``packing: true``) concatenates whole examples into rows of ``max_length``
tokens (lego-data's ``pack_examples``): position ids restart at 0 for every document and
labels never cross a boundary. Keeping attention inside each document needs the model's
help: the ``CausalLM`` contract takes a ``(B, S)`` padding mask only, so a model that keeps
packed documents apart must accept a ``document_ids`` keyword (``(B, T)``, ``-1`` on
padding; see [`accepts_document_ids()`][lego.protocols.accepts_document_ids]), e.g. by
building lego-data's ``document_attention_mask``. For other models packing is refused unless
``cross_document_attention: true`` accepts attention across the documents of a row (what
TRL's packing does without flash-attention).

The run itself is lego-train's: [`SFTTrainer`][lego.align.sft.SFTTrainer] builds the
datasets and loaders, checks the stop and pad tokens
(`lego.align.tokens`), prepares the model (full, LoRA or QLoRA through
lego-peft, `lego.align.finetune`) and hands them to a
``lego.train.Trainer``: checkpoints, exact resume, DDP / FSDP2 under ``torchrun``,
``metrics.jsonl``. The loss is the Trainer's token objective: the mean cross-entropy over
every trained token of the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from lego.align.finetune import FinetuneSettings, prepare_model
from lego.align.run import TrainerRun
from lego.align.tokens import StopTokens, check_stop_tokens, resolve_pad_id
from lego.data.collate import PaddingCollator
from lego.data.encode import TokenizedExample, encode_segments
from lego.data.example_loader import ExampleLoader
from lego.data.instruction import record_messages
from lego.data.packing import PackedCollator, PackedSequence, PackingStrategy, pack_examples
from lego.data.record_dataset import RecordDataset, record_field_messages
from lego.data.records import Record, RecordSource, SplitName, require_field
from lego.protocols import (
    IGNORE_INDEX,
    ConfigError,
    DataError,
    FolderLock,
    Tokenizer,
    TrainerCallback,
    accepts_document_ids,
)
from lego.protocols.chat import ChatTemplate, Message, Segment, TrainOn, get_chat_template
from lego.train import (
    ObjectiveOutput,
    TokenObjective,
    TrainConfig,
    model_inputs,
    token_loss,
)
from lego.train.distributed import DistInfo, init_distributed, pick_device

__all__ = [
    "SFTConfig",
    "SFTDataset",
    "SFTObjective",
    "SFTTrainer",
    "accepts_document_ids",
    "truncate_left",
]

PLAIN = "none"
"""The ``template`` value for plain text prompt / completion pairs (no chat template)."""

Overflow = Literal["drop", "error"]
EmptyCompletion = Literal["skip", "error"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig(FinetuneSettings):
    """The settings of a supervised fine-tuning run (besides lego-train's ``TrainConfig``).

    Attributes:
        template: ``"chatml"``, ``"llama3"`` (lego-protocols' templates) or ``"none"`` for
            plain text prompt / completion pairs.
        eos_token: The tokenizer's end-of-sequence special token (appended to plain
            completions; checked against the template and the generation config).
        generation_eos_token_ids: The ids the model's generation config stops on
            (``generation_config.json``'s ``eos_token_id``,
            [`generation_stop_ids()`][lego.align.tokens.generation_stop_ids]); None: only
            ``eos_token``.
        pad_token: The special token that pads; None looks for the tokenizer's own.
        max_length: The longest example (input positions).
        on_overflow: ``"drop"`` (counted) or ``"error"`` for an example whose completion
            does not fit ``max_length``.
        empty_completion: ``"error"`` or ``"skip"`` (counted) for an empty completion.
        train_on: ``messages`` rows: train every assistant message, or only the last.
        system_prompt: A system message for conversations without one.
        packing: Pack examples into rows of ``max_length`` tokens.
        packing_strategy: ``"best_fit"`` or ``"greedy"`` (lego-data's).
        cross_document_attention: Allow packing with a model that cannot keep packed
            documents apart (no ``document_ids`` keyword).
        batch_size: Rows per micro-batch and rank.
        eval_batch_size: Rows per evaluation batch (0: ``batch_size``).
        pad_to_multiple_of: Round padded lengths up to a multiple of this (None: no).
        val_fraction: The share of the training file held out for evaluation when no
            evaluation data is given (0: none).
        shuffle: Visit the examples in a seeded random order each epoch.
        seed: The data seed (split and shuffle).
    """

    template: str = "chatml"
    eos_token: str = "<|endoftext|>"
    generation_eos_token_ids: tuple[int, ...] | None = None
    pad_token: str | None = None
    max_length: int = 1024
    on_overflow: Overflow = "drop"
    empty_completion: EmptyCompletion = "error"
    train_on: TrainOn = "assistant"
    system_prompt: str | None = None
    packing: bool = False
    packing_strategy: PackingStrategy = "best_fit"
    cross_document_attention: bool = False
    batch_size: int = 8
    eval_batch_size: int = 0
    pad_to_multiple_of: int | None = None
    val_fraction: float = 0.0
    shuffle: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Check sizes and the template name."""
        super().validate()
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be at least 1, got {self.batch_size}", key="batch_size"
            )
        if self.max_length < 2:
            raise ConfigError(
                f"max_length must be at least 2 (a prompt token and the end token), got "
                f"{self.max_length}",
                key="max_length",
            )
        if self.eval_batch_size < 0:
            raise ConfigError("eval_batch_size must be >= 0", key="eval_batch_size")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ConfigError("pad_to_multiple_of must be at least 1", key="pad_to_multiple_of")
        if self.template != PLAIN:
            get_chat_template(self.template)  # an unknown name suggests the closest

    def chat_template(self) -> ChatTemplate | None:
        """The chat template, or None for ``template: none``."""
        return None if self.template == PLAIN else get_chat_template(self.template)


# -- the data ------------------------------------------------------------------------------


def truncate_left(example: TokenizedExample, max_length: int) -> TokenizedExample | None:
    """Cut an example to ``max_length`` input positions from the left, keeping its end.

    The first trained label and everything after it stay, together with the input token
    before it (the first trained token needs a context); only prompt tokens go.

    Args:
        example: Inputs and shifted labels (lego-data's ``TokenizedExample``).
        max_length: The most input positions to keep (>= 1).

    Returns:
        The example itself when it fits, the cut example, or None when its trained part
        alone is longer than ``max_length``.

    Example:
        >>> ex = TokenizedExample([1, 2, 3, 4, 5], [-100, -100, -100, 5, 9])
        >>> truncate_left(ex, 3)
        TokenizedExample(input_ids=[3, 4, 5], labels=[-100, 5, 9])
        >>> truncate_left(ex, 1) is None
        True
    """
    n = len(example.input_ids)
    if n <= max_length:
        return example
    first = next((t for t, label in enumerate(example.labels) if label != IGNORE_INDEX), n)
    if n - first > max_length:
        return None
    cut = n - max_length
    return TokenizedExample(input_ids=example.input_ids[cut:], labels=example.labels[cut:])


def _as_messages(record: Record, key: str, value: object, role: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return record_field_messages(record, key, value)


class SFTDataset(RecordDataset[TokenizedExample]):
    """Tokenized SFT examples: completions trained, prompts masked, fitted to ``max_length``.

    Args:
        source: A ``.jsonl`` path or an iterable of dictionaries (``messages``,
            ``prompt`` / ``completion`` or Alpaca rows; see the module's docstring).
        tokenizer: Any tokenizer holding the template's special tokens and ``eos_token``.
        template: A chat template, or None for plain prompt / completion text.
        eos_token: Appended (trained) after plain completions.
        max_length: The most input positions per example.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: The share of records in validation.
        seed: The split seed.
        train_on: ``messages`` rows: every assistant message or the last.
        system_prompt: A system message for conversations without one.
        on_overflow: ``"drop"`` or ``"error"`` for an example that does not fit.
        empty_completion: ``"error"`` or ``"skip"`` for an empty completion.

    Attributes:
        examples: The examples.
        lines: The source line of each example.
        truncated: Lines whose prompt was cut from the left.
        dropped: Lines dropped because the completion did not fit ``max_length``.
        empty: Lines skipped for an empty completion.

    Raises:
        DataError: A malformed record (file, line, key), an example that does not fit or
            an empty completion (with ``"error"``), or no example left.
        CompatibilityError: The tokenizer lacks a special token the template needs.

    Example:
        >>> from lego.tokenize import RegexBPETokenizer
        >>> specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
        >>> tok = RegexBPETokenizer("gpt2", special_tokens=specials)
        >>> rows = [{"prompt": "Say hi.", "completion": "hi"}]
        >>> ex = SFTDataset(rows, tok, template=get_chat_template("chatml"))[0]
        >>> tok.decode([t for t in ex.labels if t != -100])
        'hi<|im_end|>'
    """

    def __init__(
        self,
        source: RecordSource,
        tokenizer: Tokenizer,
        *,
        template: ChatTemplate | None,
        eos_token: str = "<|endoftext|>",
        max_length: int = 1024,
        split: SplitName = "train",
        val_fraction: float = 0.0,
        seed: int = 0,
        train_on: TrainOn = "assistant",
        system_prompt: str | None = None,
        on_overflow: Overflow = "drop",
        empty_completion: EmptyCompletion = "error",
    ) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}", key="max_length")
        if on_overflow not in ("drop", "error"):
            raise ConfigError(f"unknown on_overflow {on_overflow!r}", key="on_overflow")
        if empty_completion not in ("skip", "error"):
            raise ConfigError(
                f"unknown empty_completion {empty_completion!r}", key="empty_completion"
            )
        self._tokenizer = tokenizer
        self._template = template
        self._eos_token = eos_token
        self._max_length = max_length
        self._train_on: TrainOn = train_on
        self._system_prompt = system_prompt
        self._on_overflow = on_overflow
        self._empty = empty_completion
        self.truncated: list[int] = []
        self.dropped: list[int] = []
        self.empty: list[int] = []
        self._load(
            source,
            split=split,
            val_fraction=val_fraction,
            seed=seed,
            skip_untrained=True,
            nothing_left=f"no example of the {split} split is left to train on",
        )

    def _segments(self, record: Record) -> list[Segment]:
        data = record.data
        template = self._template
        if "prompt" in data or "completion" in data:
            prompt = require_field(record, "prompt", hint='give "prompt" and "completion"')
            completion = require_field(record, "completion", hint='give "prompt" and "completion"')
            if template is None:
                if not isinstance(prompt, str) or not isinstance(completion, str):
                    raise DataError(
                        f"line {record.line}: template 'none' needs string prompt and completion",
                        path=record.path,
                        line=record.line,
                        key="prompt" if not isinstance(prompt, str) else "completion",
                        hint="use a chat template (template: chatml or llama3) for messages",
                    )
                return [
                    Segment(prompt),
                    Segment(completion, train=True),
                    Segment(self._eos_token, special=True, train=True),
                ]
            prompt_messages = _as_messages(record, "prompt", prompt, "user")
            if self._system_prompt is not None and prompt_messages[0]["role"] != "system":
                prompt_messages = [
                    {"role": "system", "content": self._system_prompt},
                    *prompt_messages,
                ]
            completion_messages = _as_messages(record, "completion", completion, "assistant")
            return template.segments(
                [*prompt_messages, *completion_messages], train_from=len(prompt_messages)
            )
        if template is None:
            raise DataError(
                f"line {record.line}: template 'none' takes prompt / completion rows only",
                path=record.path,
                line=record.line,
                key="messages",
                hint="use a chat template (template: chatml or llama3) for conversations",
            )
        messages = record_messages(record, system_prompt=self._system_prompt)
        return template.segments(messages, train_on=self._train_on)

    def _encode(self, record: Record) -> TokenizedExample:
        segments = self._segments(record)
        content = [s for s in segments if s.train and not s.special]
        if not any(s.text.strip() for s in content):
            if self._empty == "error":
                raise DataError(
                    f"line {record.line}: the completion is empty (only its end token would be "
                    "trained)",
                    path=record.path,
                    line=record.line,
                    key="completion",
                    hint="remove the record, or set empty_completion: skip to skip such "
                    "records (counted)",
                )
            self.empty.append(record.line)
            return TokenizedExample()
        name = "plain text" if self._template is None else f"the {self._template.name} template"
        example = encode_segments(segments, self._tokenizer, needed_by=name)
        fitted = truncate_left(example, self._max_length)
        if fitted is None:
            if self._on_overflow == "error":
                raise DataError(
                    f"line {record.line}: the completion ({len(example) - _first(example)} "
                    f"tokens with its end token) does not fit max_length={self._max_length} "
                    "beside one prompt token",
                    path=record.path,
                    line=record.line,
                    key="max_length",
                    hint="raise max_length, shorten the completion, or set on_overflow: drop",
                )
            self.dropped.append(record.line)
            return TokenizedExample()
        if fitted is not example:
            self.truncated.append(record.line)
        return fitted

    def _trains(self, example: TokenizedExample) -> bool:
        return example.num_trained > 0

    def report(self) -> dict[str, int]:
        """The counts to log: examples kept, prompts truncated, examples dropped or skipped.

        Returns:
            ``{"examples", "truncated", "dropped", "empty"}``.
        """
        return {
            "examples": len(self.examples),
            "truncated": len(self.truncated),
            "dropped": len(self.dropped),
            "empty": len(self.empty),
        }

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.report().items())
        return f"SFTDataset({counts})"


def _first(example: TokenizedExample) -> int:
    return next((t for t, label in enumerate(example.labels) if label != IGNORE_INDEX), 0)


# -- the objective ---------------------------------------------------------------------------


class SFTObjective(TokenObjective):
    """The token cross-entropy of lego-train, passing ``document_ids`` to models that take it.

    Args:
        document_ids: Pass the batch's ``document_ids`` (packed rows) to the model.
    """

    def __init__(self, *, document_ids: bool = False) -> None:
        self.document_ids = document_ids

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], /) -> ObjectiveOutput:
        """The summed cross-entropy over the trained labels.

        Args:
            model: The (possibly wrapped) model.
            batch: ``input_ids``, ``labels`` and the optional ``attention_mask``,
                ``position_ids`` and ``document_ids``, each ``(B, T)``.

        Returns:
            The summed loss and the trained-token count.
        """
        extra = ("document_ids",) if self.document_ids else ()
        logits: Tensor = model(batch["input_ids"], **model_inputs(batch, extra))  # (B, T, V)
        loss_sum, n_tokens = token_loss(logits, batch["labels"])
        return ObjectiveOutput(loss_sum, n_tokens)

    def __repr__(self) -> str:
        return f"SFTObjective(document_ids={self.document_ids})"


# -- the trainer ------------------------------------------------------------------------------


class SFTTrainer(TrainerRun):
    """Supervised fine-tuning of any ``CausalLM`` on lego-train's Trainer.

    Everything is checked before the first step: the stop tokens
    ([`check_stop_tokens()`][lego.align.tokens.check_stop_tokens]), the pad token, the
    data (every record tokenized), packing support. The data counts (prompts truncated,
    examples dropped or skipped) are printed and logged in ``metrics.jsonl`` (split
    ``data``).

    Args:
        model: Any ``CausalLM`` ``nn.Module`` (not yet adapted: ``config.finetune`` decides).
        tokenizer: Any tokenizer with the template's special tokens, ``eos_token`` and a
            pad token; saved into every checkpoint.
        train_data: The training records: a ``.jsonl`` path or dictionaries.
        config: The SFT settings.
        train: lego-train's settings (``out_dir``, ``max_steps``, optimizer, schedule,
            precision, checkpoints, resume, strategy...).
        eval_data: Evaluation records (all of them), or None: the ``val_fraction`` split
            of ``train_data`` when positive, else no evaluation.
        callbacks: More lego-train callbacks.
        tokenizer_hash: Identifies the tokenizer for resume checks.
        console_stream: Where progress lines go (default: stderr).
        lock: The lock of ``train.out_dir`` when the caller holds it (a recipe locks the
            run before it reads the data); None: ``fit()`` takes it.

    Attributes:
        model: The model being trained (a ``LoraModel`` for LoRA / QLoRA).
        stops: The checked stop tokens.
        pad_id: The padding id.
        train_set: The training examples ([`SFTDataset`][lego.align.sft.SFTDataset]).
        eval_set: The evaluation examples, or None.
        trainer: The ``lego.train.Trainer``.

    Raises:
        ConfigError: Stop tokens that disagree, no pad token, packing on a model that cannot
            keep documents apart, a bad setting.
        DataError: Bad records (file, line, key).
        CompatibilityError: The tokenizer lacks a template token.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_data: RecordSource,
        config: SFTConfig,
        train: TrainConfig,
        eval_data: RecordSource | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        tokenizer_hash: str | None = None,
        console_stream: Any = None,
        lock: FolderLock | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        template = config.chat_template()
        self.stops: StopTokens = check_stop_tokens(
            tokenizer,
            template,
            eos_token=config.eos_token,
            generation_eos_token_ids=config.generation_eos_token_ids,
        )
        self.pad_id = resolve_pad_id(
            tokenizer, config.pad_token, avoid=(self.stops.eos_id, self.stops.trained_end_id)
        )
        document_ids = False
        if config.packing:
            document_ids = accepts_document_ids(model)
            if not document_ids and not config.cross_document_attention:
                raise ConfigError(
                    f"packing: {type(model).__name__} cannot keep packed documents apart (its "
                    "forward takes no document_ids; the CausalLM contract's (B, S) mask cannot "
                    "express where documents meet)",
                    key="packing",
                    hint="set packing: false, or cross_document_attention: true to let the "
                    "documents of a row attend to each other (positions still restart and "
                    "labels stay inside each document)",
                )

        def dataset(source: RecordSource, split: SplitName) -> SFTDataset:
            return SFTDataset(
                source,
                tokenizer,
                template=template,
                eos_token=config.eos_token,
                max_length=config.max_length,
                split=split,
                val_fraction=config.val_fraction if eval_data is None else 0.0,
                seed=config.seed,
                train_on=config.train_on,
                system_prompt=config.system_prompt,
                on_overflow=config.on_overflow,
                empty_completion=config.empty_completion,
            )

        self.train_set = dataset(train_data, "train")
        self.eval_set: SFTDataset | None = None
        if eval_data is not None:
            self.eval_set = dataset(eval_data, "all")
        elif config.val_fraction > 0:
            self.eval_set = dataset(train_data, "val")

        info = init_distributed(pick_device(train.device))
        train_loader = self._examples(self.train_set, config.batch_size, train=True, info=info)
        eval_loader = None
        if self.eval_set is not None:
            size = config.eval_batch_size or config.batch_size
            eval_loader = self._examples(self.eval_set, size, train=False, info=info)

        self.model = prepare_model(model, config)
        counts = {f"train_{k}": v for k, v in self.train_set.report().items()}
        if self.eval_set is not None:
            counts.update({f"eval_{k}": v for k, v in self.eval_set.report().items()})
        self._start(
            model=self.model,
            objective=SFTObjective(document_ids=document_ids),
            train_loader=train_loader,
            eval_loader=eval_loader,
            train=train,
            tokenizer=tokenizer,
            callbacks=callbacks,
            tokenizer_hash=tokenizer_hash,
            console_stream=console_stream,
            lock=lock,
            counts=counts,
            message=self._describe(),
        )

    def _examples(
        self, examples: SFTDataset, batch_size: int, *, train: bool, info: DistInfo
    ) -> ExampleLoader[Any, Any]:
        config = self.config
        items: Sequence[Any]
        collate: Callable[[list[Any]], Any]
        if config.packing:
            packed: list[PackedSequence] = pack_examples(
                examples,
                max_length=config.max_length,
                pad_id=self.pad_id,
                strategy=config.packing_strategy,
                too_long="error",
            )
            items, collate = packed, PackedCollator()
        else:
            items = examples
            collate = PaddingCollator(
                pad_id=self.pad_id,
                eos_id=self.stops.eos_id,
                pad_to_multiple_of=config.pad_to_multiple_of,
            )
        return self._loader(
            items,
            batch_size=batch_size,
            collate_fn=collate,
            train=train,
            shuffle=config.shuffle,
            seed=config.seed,
            info=info,
        )

    def _describe(self) -> str:
        parts = []
        for name, data in (("train", self.train_set), ("eval", self.eval_set)):
            if data is None:
                continue
            counts = data.report()
            text = f"{name}: {counts['examples']} examples"
            if counts["truncated"]:
                text += (
                    f", {counts['truncated']} prompts truncated from the left to "
                    f"max_length={self.config.max_length}"
                )
            if counts["dropped"]:
                text += f", {counts['dropped']} dropped (completion longer than max_length)"
            if counts["empty"]:
                text += f", {counts['empty']} skipped (empty completion)"
            parts.append(text)
        return "SFT data: " + "; ".join(parts)
