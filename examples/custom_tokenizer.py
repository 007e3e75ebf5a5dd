"""Write your own tokenizer: a UTF-8 byte-level one that satisfies LegoLLM's contract.

Ids 0..255 are the bytes of the UTF-8 text; special tokens (here ``<|endoftext|>`` = 256)
are registered through :class:`lego.protocols.SpecialTokens`. Like tiktoken, a special
token's string found in the text becomes its id only when the caller allows it; otherwise
encoding refuses the text (or, with ``disallowed_special=()``, encodes it as plain bytes).

The class does not inherit from anything: ``Tokenizer`` is a ``typing.Protocol``, so any
object with ``vocab_size``, ``special_tokens``, ``encode`` and ``decode`` is a tokenizer
for lego-data, lego-generate and the command-line tools.

    python examples/custom_tokenizer.py [--quick]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping, Sequence, Set
from pathlib import Path
from typing import Literal

from lego.protocols import ENDOFTEXT, ConfigError, DataError, LegoError, SpecialTokens, Tokenizer
from lego.protocols.testing import TokenizerContract


class ByteTokenizer:
    """Bytes 0..255 as ids, plus special tokens with ids from 256 up."""

    def __init__(self, special_tokens: Mapping[str, int] | None = None) -> None:
        # SpecialTokens validates the map: non-empty strings, distinct non-negative ids.
        specials = SpecialTokens({ENDOFTEXT: 256} if special_tokens is None else special_tokens)
        low = [t for t, i in specials.items() if i < 256]
        if low:
            raise ConfigError(
                f"special token {low[0]!r} has id {specials[low[0]]}, which is a byte",
                key=low[0],
                hint="give special tokens ids of 256 and up",
            )
        self._specials = specials
        self._vocab_size = max(specials.ids, default=255) + 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._specials

    def encode(
        self,
        text: str,
        *,
        allowed_special: Set[str] | Literal["all"] = frozenset(),
        disallowed_special: Collection[str] | Literal["all"] = "all",
    ) -> list[int]:
        """Encode text; special-token strings become ids only when in ``allowed_special``."""
        allowed = set(self._specials) if allowed_special == "all" else set(allowed_special)
        disallowed = (
            set(self._specials) - allowed
            if disallowed_special == "all"
            else set(disallowed_special)
        )
        for token in disallowed:  # tiktoken's safety rule: no silent special tokens
            if (at := text.find(token)) >= 0:
                raise DataError(
                    f"the text contains the special token {token!r}",
                    line=text.count("\n", 0, at) + 1,
                    column=at - text.rfind("\n", 0, at),
                    hint=f"pass allowed_special={{{token!r}}} to encode it as its id, "
                    "or disallowed_special=() to encode it as plain text",
                )
        if not allowed:
            return list(text.encode("utf-8"))
        # Split on the allowed specials (longest first, so no token shadows a longer one).
        pattern = "|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True))
        ids: list[int] = []
        for piece in re.split(f"({pattern})", text):
            ids += [self._specials[piece]] if piece in allowed else list(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids; bytes that are not valid UTF-8 become U+FFFD, as the contract says."""
        out = bytearray()
        for position, token_id in enumerate(ids):
            if 0 <= token_id < 256:
                out.append(token_id)
            elif (special := self._specials.token_for(token_id)) is not None:
                out += special.encode("utf-8")
            else:
                raise DataError(
                    f"token id {token_id} is not in this tokenizer's vocabulary",
                    key=f"ids[{position}]",
                    hint=f"ids must be bytes (0..255) or special ids {sorted(self._specials.ids)}",
                )
        return out.decode("utf-8", errors="replace")


class ByteTokenizerConformance(TokenizerContract):
    """LegoLLM's tokenizer conformance suite, run here without pytest."""

    def make_tokenizer(self) -> Tokenizer:
        return ByteTokenizer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip the larger round trip")
    args = parser.parse_args(argv)

    tok = ByteTokenizer()
    # 1. A structural check: no base class, yet it is a Tokenizer.
    print(f"isinstance(tok, Tokenizer): {isinstance(tok, Tokenizer)}")
    print(f"ByteTokenizer bases: {[b.__name__ for b in ByteTokenizer.__mro__[1:]]}")
    print(f"vocab_size={tok.vocab_size}, special_tokens={dict(tok.special_tokens)}")

    # 2. Round trips, multi-byte characters included.
    for text in ("hello world", "naïve café", "日本語 🤖"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        print(f"{text!r:>16} -> {len(ids):2d} ids {ids[:8]}{' ...' if len(ids) > 8 else ''}")

    # 3. Special tokens, tiktoken-style.
    doc = f"first document{ENDOFTEXT}second"
    ids = tok.encode(doc, allowed_special={ENDOFTEXT})
    print(f"allowed:     {ENDOFTEXT} -> id {ids[len('first document')]}, {len(ids)} ids in all")
    ids = tok.encode(doc, disallowed_special=())
    print(f"as text:     {ENDOFTEXT} -> {len(ENDOFTEXT)} byte ids, {len(ids)} ids in all")
    try:
        tok.encode(doc)
    except DataError as err:
        print(f"not allowed: DataError at {err.where}; hint: {err.hint}")

    # 4. A half character decodes to U+FFFD instead of failing.
    print(f"decode(first byte of 'é') = {tok.decode(list('é'.encode())[:1])!r}")

    # 5. Bad input is a LegoError that says what, where and what to do.
    try:
        tok.decode([104, 105, 9999])
    except LegoError as err:
        print(f"\n{type(err).__name__}: {err}")
        print(f"  err.key = {err.key!r}, err.hint = {err.hint!r}")

    # 6. The conformance suite every LegoLLM tokenizer's tests run.
    suite = ByteTokenizerConformance()
    tests = [name for name in dir(suite) if name.startswith("test_")]
    for name in tests:
        getattr(suite, name)()
    print(f"\nconformance: {len(tests)} TokenizerContract checks passed")

    if not args.quick:  # a larger round trip: this file's own source
        source = Path(__file__).read_text(encoding="utf-8")
        ids = tok.encode(source, disallowed_special=())  # it mentions <|endoftext|>
        assert tok.decode(ids) == source
        print(f"round-tripped {len(source)} characters of source as {len(ids)} byte ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
