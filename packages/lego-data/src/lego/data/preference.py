"""Preference datasets (DPO, reward models): a prompt with a chosen and a rejected response.

Each line of the ``.jsonl`` file holds ``prompt``, ``chosen`` and ``rejected``:

- as strings: ``{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}``; with a chat
  template the prompt becomes a user message and each response an assistant message;
- as conversations: ``"prompt"`` a list of messages, ``"chosen"`` / ``"rejected"`` a list of
  assistant messages (or a string).

Each pair is tokenized twice, prompt + chosen and prompt + rejected, with only the response
trained (the prompt's own assistant turns stay masked).
[`PreferenceCollator`][lego.data.preference.PreferenceCollator] pads both sides to one common
length, so a trainer can run them as one concatenated batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from lego.data.collate import PaddingCollator, example_fields, padded_length
from lego.data.encode import TokenizedExample, encode_alpaca, encode_segments
from lego.data.instruction import ALPACA
from lego.data.record_dataset import RecordDataset, record_field_messages
from lego.data.records import Record, RecordSource, SplitName, require_field
from lego.protocols import DataError, Tokenizer
from lego.protocols.chat import ChatTemplate, Message, get_chat_template, with_system_prompt

__all__ = [
    "PreferenceExample",
    "PreferenceDataset",
    "PreferenceBatch",
    "PreferenceCollator",
]


@dataclass(frozen=True)
class PreferenceExample:
    """A tokenized preference pair.

    Attributes:
        chosen: Prompt + preferred response (only the response trained).
        rejected: Prompt + dispreferred response (only the response trained).
    """

    chosen: TokenizedExample
    rejected: TokenizedExample


class PreferenceBatch(TypedDict):
    """A padded batch of preference pairs; every tensor is ``(B, L)`` int64.

    Attributes:
        chosen_input_ids: Prompt + chosen response ids.
        chosen_labels: Shifted labels, ``-100`` on the prompt and padding.
        chosen_attention_mask: 1 real / 0 padding.
        rejected_input_ids: Prompt + rejected response ids.
        rejected_labels: Shifted labels, ``-100`` on the prompt and padding.
        rejected_attention_mask: 1 real / 0 padding.
    """

    chosen_input_ids: torch.Tensor
    chosen_labels: torch.Tensor
    chosen_attention_mask: torch.Tensor
    rejected_input_ids: torch.Tensor
    rejected_labels: torch.Tensor
    rejected_attention_mask: torch.Tensor


_NEEDS: str = 'every preference record needs "prompt", "chosen" and "rejected"'


def _messages(record: Record, key: str, value: Any, *, role: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return record_field_messages(record, key, value)


class PreferenceDataset(RecordDataset[PreferenceExample]):
    """Tokenized preference pairs from a ``.jsonl`` file or a list of records.

    Args:
        source: A ``.jsonl`` path, or an iterable of dictionaries.
        tokenizer: Any [`Tokenizer`][lego.protocols.Tokenizer].
        template: ``"chatml"``, ``"llama3"``, a [`ChatTemplate`][lego.protocols.chat.ChatTemplate],
            or ``"alpaca"`` (string prompts used as the instruction).
        max_length: Keep at most this many input positions per side.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: The fraction of records in validation.
        seed: The split seed.
        eos_token: With ``"alpaca"``: the special token appended after each response.
        system_prompt: With a chat template: a system message for prompts without one.
        skip_untrained: Drop pairs where a side has no trained label (e.g. a prompt longer
            than ``max_length``); their line numbers are in ``skipped``.

    Attributes:
        examples: The tokenized pairs.
        lines: The source line of each pair.
        skipped: Lines dropped for having no trained label on a side.

    Raises:
        DataError: On a corrupt line, a missing field (file, line and key), or an empty
            split.
        CompatibilityError: When the tokenizer lacks a special token the format needs.
        ConfigError: On an unknown template, split or fraction.
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
        eos_token: str | None = "<|endoftext|>",
        system_prompt: str | None = None,
        skip_untrained: bool = True,
    ) -> None:
        is_alpaca = isinstance(template, str) and template.lower() == ALPACA
        self._chat = None if is_alpaca else get_chat_template(template)
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._eos_token = eos_token
        self._system_prompt = system_prompt
        self._load(
            source,
            split=split,
            val_fraction=val_fraction,
            seed=seed,
            skip_untrained=skip_untrained,
            nothing_left=f"no pair of the {split} split has trained tokens on both sides",
        )

    def _encode(self, record: Record) -> PreferenceExample:
        return PreferenceExample(
            chosen=self._encode_side(record, "chosen"),
            rejected=self._encode_side(record, "rejected"),
        )

    def _trains(self, example: PreferenceExample) -> bool:
        return example.chosen.num_trained > 0 and example.rejected.num_trained > 0

    def _encode_side(self, record: Record, side: str) -> TokenizedExample:
        prompt = require_field(record, "prompt", hint=_NEEDS)
        response = require_field(record, side, hint=_NEEDS)
        if self._chat is None:
            if not isinstance(prompt, str) or not isinstance(response, str):
                raise DataError(
                    f"line {record.line}: the Alpaca format needs string prompt and responses",
                    path=record.path,
                    line=record.line,
                    key="prompt" if not isinstance(prompt, str) else side,
                    hint="use a chat template (template='chatml' or 'llama3') for conversations",
                )
            return encode_alpaca(
                prompt,
                response,
                self._tokenizer,
                eos_token=self._eos_token,
                max_length=self._max_length,
            )
        prompt_messages = with_system_prompt(
            _messages(record, "prompt", prompt, role="user"), self._system_prompt
        )
        response_messages = _messages(record, side, response, role="assistant")
        segments = self._chat.segments(
            [*prompt_messages, *response_messages], train_from=len(prompt_messages)
        )
        return encode_segments(
            segments,
            self._tokenizer,
            max_length=self._max_length,
            needed_by=f"the {self._chat.name} template",
        )

    def __repr__(self) -> str:
        name = "alpaca" if self._chat is None else self._chat.name
        return (
            f"PreferenceDataset(template={name!r}, pairs={len(self)}, skipped={len(self.skipped)})"
        )


class PreferenceCollator:
    """Pad preference pairs: chosen and rejected sides to one common length.

    Args:
        pad_id: The id written into padded positions.
        eos_id: The end-of-sequence id; must differ from ``pad_id`` when given.
        pad_to_multiple_of: Round the padded length up to a multiple of this.

    Raises:
        ConfigError: When ``pad_id == eos_id`` or a setting is invalid.
    """

    def __init__(
        self, *, pad_id: int, eos_id: int | None = None, pad_to_multiple_of: int | None = None
    ) -> None:
        self._padding = PaddingCollator(
            pad_id=pad_id, eos_id=eos_id, pad_to_multiple_of=pad_to_multiple_of
        )

    def __call__(self, pairs: Sequence[object]) -> PreferenceBatch:
        """Collate pairs into a [`PreferenceBatch`][lego.data.preference.PreferenceBatch].

        Args:
            pairs: [`PreferenceExample`][lego.data.preference.PreferenceExample]s, or
                mappings with ``chosen`` and ``rejected`` examples.

        Returns:
            Six ``(B, L)`` int64 tensors; ``L`` is the longest side of the batch, rounded up.

        Raises:
            DataError: On an empty batch or a malformed pair.
        """
        if not pairs:
            raise DataError("cannot collate an empty batch")
        chosen, rejected = [], []
        for number, pair in enumerate(pairs):
            if isinstance(pair, PreferenceExample):
                sides = (pair.chosen, pair.rejected)
            elif isinstance(pair, Mapping) and "chosen" in pair and "rejected" in pair:
                sides = (pair["chosen"], pair["rejected"])
            else:
                raise DataError(
                    f"pair {number} of the batch has no chosen and rejected sides",
                    key=f"[{number}]",
                )
            chosen.append(example_fields(sides[0], number))
            rejected.append(example_fields(sides[1], number))
        longest = max(len(ids) for ids, _ in chosen + rejected)
        length = padded_length(longest, self._padding.pad_to_multiple_of)
        c = self._padding.pad(chosen, length)
        r = self._padding.pad(rejected, length)
        return {
            "chosen_input_ids": c["input_ids"],  # (B, L)
            "chosen_labels": c["labels"],
            "chosen_attention_mask": c["attention_mask"],
            "rejected_input_ids": r["input_ids"],  # (B, L)
            "rejected_labels": r["labels"],
            "rejected_attention_mask": r["attention_mask"],
        }
