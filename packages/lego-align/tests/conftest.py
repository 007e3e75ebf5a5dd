"""A toy causal LM for the unit tests (lego-arch is not a dependency): plain torch.nn.

``TinyLM`` embeds tokens, adds a learned embedding of ``position_ids``, averages each
position's prefix over the real tokens only (``attention_mask``), and projects to the
vocabulary: causal, padding-invariant when given the batch's position ids, and a
``lego.protocols.CausalLM``. ``hidden()`` returns the output head's input, for the
``HeadInputs`` path.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.protocols import ModelConfig

VOCAB = 13
WIDTH = 6


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._config = ModelConfig(vocab_size=VOCAB, context_length=32)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(32, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=True)

    @property
    def config(self) -> ModelConfig:
        return self._config

    def hidden(
        self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None
    ) -> Tensor:
        t = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = torch.arange(t).expand_as(input_ids)
        x = self.embed(input_ids) + self.positions(position_ids)  # (B, T, W)
        weights = mask.to(x.dtype)[..., None]  # (B, T, 1)
        prefix = (x * weights).cumsum(dim=1) / weights.cumsum(dim=1).clamp(min=1)  # (B, T, W)
        return torch.tanh(self.mix(prefix)) + x  # (B, T, W)

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        logits: Tensor = self.lm_head(self.hidden(input_ids, attention_mask, position_ids))
        return logits  # (B, T, V)


@pytest.fixture
def tiny() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


# -- SFT and reward models: a character tokenizer, larger tiny models ---------------------------

SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|pad|>": 3}
ALPHABET = " \nabcdefghijklmnopqrstuvwxyz0123456789.,?!:"
CHAR_VOCAB = len(SPECIALS) + len(ALPHABET)


class CharTokenizer:
    """One id per character of ``ALPHABET`` (after the special tokens): a lego Tokenizer."""

    def __init__(self, specials: dict[str, int] | None = None) -> None:
        self._specials = dict(SPECIALS if specials is None else specials)
        self._offset = max(self._specials.values(), default=-1) + 1

    @property
    def vocab_size(self) -> int:
        return self._offset + len(ALPHABET)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(ALPHABET))
        if unknown:
            raise ValueError(f"characters outside the alphabet: {unknown}")
        return [self._offset + ALPHABET.index(c) for c in text]

    def decode(self, ids: Any) -> str:
        names = {v: k for k, v in self._specials.items()}
        return "".join(
            names[i] if i in names else ALPHABET[i - self._offset] for i in (int(j) for j in ids)
        )


class WideLM(TinyLM):
    """TinyLM with a chosen vocabulary, width and context (for the character tokenizer)."""

    def __init__(self, vocab: int = CHAR_VOCAB, width: int = 8, context: int = 96) -> None:
        super().__init__()
        self._config = ModelConfig(vocab_size=vocab, context_length=context)
        self.embed = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.mix = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, vocab, bias=True)


class DocumentLM(WideLM):
    """WideLM whose prefix average stays inside each packed document (``document_ids``)."""

    def hidden_docs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        document_ids: Tensor | None,
    ) -> Tensor:
        t = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = torch.arange(t).expand_as(input_ids)
        x = self.embed(input_ids) + self.positions(position_ids)  # (B, T, W)
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None] & mask.bool()[:, None, :]
        if document_ids is not None:
            allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
        weights = allowed.to(x.dtype)  # (B, T, T): query t averages keys s
        prefix = weights @ x / weights.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, T, W)
        return torch.tanh(self.mix(prefix)) + x  # (B, T, W)

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        hidden = self.hidden_docs(input_ids, attention_mask, position_ids, document_ids)
        logits: Tensor = self.lm_head(hidden)
        return logits  # (B, T, V)


@pytest.fixture
def chars() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def kit() -> Any:
    """The classes above, for tests that build several models or tokenizers."""
    from types import SimpleNamespace

    return SimpleNamespace(
        CharTokenizer=CharTokenizer,
        WideLM=WideLM,
        DocumentLM=DocumentLM,
        TinyLM=TinyLM,
        SPECIALS=SPECIALS,
        CHAR_VOCAB=CHAR_VOCAB,
    )
