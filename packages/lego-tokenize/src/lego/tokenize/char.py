"""Character-level tokenizer: one id per Unicode character (nanoGPT's shakespeare_char).

Example:
    >>> tok = CharTokenizer.from_text("hello world")
    >>> tok.encode("hello")
    [3, 2, 4, 4, 5]
    >>> tok.decode(tok.encode("low"))
    'low'
"""

from __future__ import annotations

from typing import ClassVar

from lego.protocols import ConfigError
from lego.tokenize.vocab_tokenizer import VocabularyTokenizer
from lego.tokenize.vocabulary import DEFAULT_SPECIALS, UNK, Vocabulary

__all__ = ["CharTokenizer"]


class CharTokenizer(VocabularyTokenizer):
    """One token per character; unknown characters become ``<unk>``.

    Train it (``train(text, vocab_size)``: the most frequent characters), build it from a
    text's alphabet with [`from_text`][lego.tokenize.CharTokenizer.from_text], or pass a
    [`Vocabulary`][lego.tokenize.Vocabulary] of single characters.

    Args:
        vocabulary: Single characters and special tokens (default: only ``<unk>`` and
            ``<|endoftext|>``).
        min_frequency: What ``train`` keeps: characters seen at least this often.

    Raises:
        ConfigError: When an ordinary token is not exactly one character.
    """

    type_name: ClassVar[str] = "char"
    split_pattern: ClassVar[str] = r"(?s)."

    @classmethod
    def from_text(
        cls, text: str, *, special_tokens: tuple[str, ...] = DEFAULT_SPECIALS
    ) -> CharTokenizer:
        """Build the tokenizer of a text's alphabet, characters in code-point order.

        Args:
            text: The text whose distinct characters become the tokens.
            special_tokens: Special tokens, numbered after the characters.

        Returns:
            The tokenizer (``<unk>`` is the unknown token when listed).
        """
        chars = sorted(set(text) - set(special_tokens))
        specials = {token: len(chars) + i for i, token in enumerate(special_tokens)}
        unk = UNK if UNK in specials else None
        return cls(vocabulary=Vocabulary(tokens=chars, special_tokens=specials, unk_token=unk))

    def _check_vocabulary(self, vocabulary: Vocabulary) -> None:
        for token in vocabulary.tokens:
            if len(token) != 1:
                raise ConfigError(
                    f"a character tokenizer's tokens are single characters, got {token!r}",
                    key=token,
                )
