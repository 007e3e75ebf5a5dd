"""Text to ids and back, as an OpenAI-compatible server sees them.

A text prompt (``/v1/completions``'s ``prompt``, ``/tokenize``'s ``prompt``) is encoded the
way HuggingFace tokenizers (and so vLLM) encode it: the strings of the tokenizer's special
tokens become their ids, the text between them is encoded as plain text. lm-evaluation-harness
relies on it: it finds the EOS id by tokenizing the EOS string through ``/tokenize``. Chat
messages are different: the chat template encodes them, and message text that looks like a
special token stays text (``lego.protocols.chat``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lego.protocols import Tokenizer
from lego.protocols.chat import encode_text

__all__ = ["encode_prompt", "token_text", "SpecialSplitter"]


class SpecialSplitter:
    """Split text at the strings of a tokenizer's special tokens.

    Args:
        special_tokens: Special-token strings to ids.

    Example:
        >>> splitter = SpecialSplitter({"<|endoftext|>": 3})
        >>> splitter.split("a<|endoftext|>b")
        ['a', 3, 'b']
    """

    def __init__(self, special_tokens: Mapping[str, int]) -> None:
        self._ids = {token: int(i) for token, i in special_tokens.items() if token}
        # The longest first, so that "<|im_start|>" wins over a special that is its prefix.
        names = sorted(self._ids, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, names))) if names else None

    def split(self, text: str) -> list[str | int]:
        """Split ``text`` into plain pieces (strings) and special-token ids.

        Args:
            text: Any text.

        Returns:
            Non-empty strings and ids, in order.
        """
        if self._pattern is None:
            return [text] if text else []
        out: list[str | int] = []
        start = 0
        for match in self._pattern.finditer(text):
            if match.start() > start:
                out.append(text[start : match.start()])
            out.append(self._ids[match.group()])
            start = match.end()
        if start < len(text):
            out.append(text[start:])
        return out


def encode_prompt(
    tokenizer: Tokenizer, text: str, *, splitter: SpecialSplitter | None = None
) -> list[int]:
    """Encode a text prompt, special-token strings becoming their ids.

    Args:
        tokenizer: Any tokenizer.
        text: The prompt.
        splitter: A prepared [`SpecialSplitter`][lego.serve.tokens.SpecialSplitter] for
            ``tokenizer`` (built here when None).

    Returns:
        The token ids.

    Raises:
        DataError: When the tokenizer refuses a piece of the text.

    Example:
        >>> class Chars:
        ...     vocab_size, special_tokens = 258, {"<eos>": 257}
        ...     def encode(self, text): return [ord(c) for c in text]
        ...     def decode(self, ids): return "".join(chr(i) for i in ids)
        >>> encode_prompt(Chars(), "hi<eos>")
        [104, 105, 257]
    """
    splitter = splitter or SpecialSplitter(tokenizer.special_tokens)
    ids: list[int] = []
    for piece in splitter.split(text):
        if isinstance(piece, int):
            ids.append(piece)
        else:
            ids += encode_text(tokenizer, piece)
    return ids


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    r"""The text of one token, as the log-probability fields show it.

    A token that holds part of a multi-byte character decodes to the tokenizer's
    replacement text (usually ``"\ufffd"``), as in OpenAI's and vLLM's responses.

    Args:
        tokenizer: Any tokenizer.
        token_id: The id.

    Returns:
        ``tokenizer.decode([token_id])``.
    """
    return tokenizer.decode([token_id])


def decode_all(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Decode ids to text (``/detokenize``, echoed token-id prompts).

    Args:
        tokenizer: Any tokenizer.
        ids: The ids.

    Returns:
        The text.
    """
    return tokenizer.decode(list(ids)) if ids else ""
