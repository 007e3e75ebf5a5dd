"""Instruction (SFT) datasets from JSON Lines: Alpaca records or chat conversations.

Each line of the file is one of:

- an Alpaca record: ``{"instruction": ..., "input": ... (optional), "output": ...}``;
- a conversation: ``{"messages": [{"role": "user", "content": ...}, ...]}``.

[`InstructionDataset`][lego.data.instruction.InstructionDataset] reads the file (or a list
of dictionaries), keeps one split (a seeded, deterministic train/validation division, see
[`split_indices()`][lego.data.records.split_indices]), renders every record with the chosen
format and tokenizes it into a [`TokenizedExample`][lego.data.encode.TokenizedExample]:
prompt tokens masked with ``-100``, only the responses trained.

Formats: ``template="alpaca"`` renders Alpaca records with the Alpaca prompt and appends
``eos_token``; a chat template (``"chatml"``, ``"llama3"`` or any
[`ChatTemplate`][lego.protocols.chat.ChatTemplate]) renders conversations, and turns an Alpaca
record into a user message (the instruction, then a blank line and the input when there is
one) and an assistant message (the output).
"""

from __future__ import annotations

from lego.data.encode import TokenizedExample, encode_alpaca, encode_segments
from lego.data.record_dataset import RecordDataset, record_field_messages
from lego.data.records import Record, RecordSource, SplitName, require_str
from lego.protocols import DataError, Tokenizer
from lego.protocols.chat import (
    ChatTemplate,
    Message,
    TrainOn,
    get_chat_template,
    with_system_prompt,
)

__all__ = ["InstructionDataset", "record_messages", "ALPACA"]

ALPACA = "alpaca"
"""The template name of the Alpaca prompt format."""


def record_messages(record: Record, *, system_prompt: str | None = None) -> list[Message]:
    """Return a record as chat messages (Alpaca records become one user/assistant exchange).

    Args:
        record: A record with ``messages``, or with ``instruction`` / ``input`` / ``output``.
        system_prompt: A system message to put first when the conversation has none.

    Returns:
        The validated messages.

    Raises:
        DataError: When the record has neither shape, or a field is missing or mistyped
            (naming the key and line).
    """
    data = record.data
    if "messages" in data:
        messages = record_field_messages(record, "messages", data["messages"])
    elif "instruction" in data or "output" in data:
        instruction = require_str(record, "instruction")
        extra = require_str(record, "input", optional=True)
        output = require_str(record, "output")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    else:
        present = ", ".join(sorted(data)) or "none"
        raise DataError(
            f"record on line {record.line} is neither a conversation nor an Alpaca record "
            f"(fields: {present})",
            path=record.path,
            line=record.line,
            key="messages",
            hint='give each line "messages", or "instruction" and "output" (and "input")',
        )
    return with_system_prompt(messages, system_prompt)


class InstructionDataset(RecordDataset[TokenizedExample]):
    """Tokenized instruction examples from a ``.jsonl`` file or a list of records.

    Args:
        source: A ``.jsonl`` path, or an iterable of dictionaries.
        tokenizer: Any [`Tokenizer`][lego.protocols.Tokenizer] (holding the template's
            special tokens).
        template: ``"alpaca"``, ``"chatml"``, ``"llama3"`` or a
            [`ChatTemplate`][lego.protocols.chat.ChatTemplate].
        max_length: Keep at most this many input positions per example (None: no limit).
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: The fraction of records in validation.
        seed: The split seed.
        train_on: With a chat template: train every assistant message or only the last.
        eos_token: With ``"alpaca"``: the special token appended after each output.
        system_prompt: With a chat template: a system message for conversations without one.
        skip_untrained: Drop examples left with no trained label (e.g. a prompt longer than
            ``max_length``); their line numbers are in ``skipped``.

    Attributes:
        examples: The tokenized examples of the split.
        lines: The source line of each example.
        skipped: Lines dropped for having no trained label.

    Raises:
        DataError: On a corrupt line, a missing field (file, line and key), or an empty
            split.
        CompatibilityError: When the tokenizer lacks a special token the format needs.
        ConfigError: On an unknown template, split or fraction.

    Example:
        >>> from lego.tokenize import RegexBPETokenizer
        >>> specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
        >>> tok = RegexBPETokenizer("gpt2", special_tokens=specials)
        >>> records = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(20)]
        >>> train = InstructionDataset(records, tok, template="chatml", val_fraction=0.1)
        >>> len(train), len(InstructionDataset(records, tok, split="val", val_fraction=0.1))
        (18, 2)
    """

    def __init__(
        self,
        source: RecordSource,
        tokenizer: Tokenizer,
        *,
        template: str | ChatTemplate = "chatml",
        max_length: int | None = None,
        split: SplitName = "train",
        val_fraction: float = 0.0,
        seed: int = 0,
        train_on: TrainOn = "assistant",
        eos_token: str | None = "<|endoftext|>",
        system_prompt: str | None = None,
        skip_untrained: bool = True,
    ) -> None:
        is_alpaca = isinstance(template, str) and template.lower() == ALPACA
        self._chat = None if is_alpaca else get_chat_template(template)
        self.template_name = ALPACA if self._chat is None else self._chat.name
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._train_on: TrainOn = train_on
        self._eos_token = eos_token
        self._system_prompt = system_prompt
        self._load(
            source,
            split=split,
            val_fraction=val_fraction,
            seed=seed,
            skip_untrained=skip_untrained,
            nothing_left=f"no example of the {split} split has a trained token",
        )

    def _encode(self, record: Record) -> TokenizedExample:
        chat = self._chat
        if chat is None:
            return self._alpaca(record, self._tokenizer, self._eos_token, self._max_length)
        messages = record_messages(record, system_prompt=self._system_prompt)
        return encode_segments(
            chat.segments(messages, train_on=self._train_on),
            self._tokenizer,
            max_length=self._max_length,
            needed_by=f"the {chat.name} template",
        )

    def _trains(self, example: TokenizedExample) -> bool:
        return example.num_trained > 0

    @staticmethod
    def _alpaca(
        record: Record, tokenizer: Tokenizer, eos_token: str | None, max_length: int | None
    ) -> TokenizedExample:
        if "messages" in record.data:
            raise DataError(
                f"line {record.line} holds a conversation; the Alpaca format needs "
                "instruction / input / output",
                path=record.path,
                line=record.line,
                key="messages",
                hint="use a chat template (template='chatml' or 'llama3') for conversations",
            )
        return encode_alpaca(
            require_str(record, "instruction"),
            require_str(record, "output"),
            tokenizer,
            input=require_str(record, "input", optional=True),
            eos_token=eos_token,
            max_length=max_length,
        )

    def lengths(self) -> list[int]:
        """Every example's length (input positions), e.g. for packing statistics."""
        return [len(example) for example in self.examples]

    def __repr__(self) -> str:
        return (
            f"InstructionDataset(template={self.template_name!r}, examples={len(self)}, "
            f"skipped={len(self.skipped)})"
        )
