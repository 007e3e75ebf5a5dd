"""Stop conditions: end-of-sequence ids and stop strings.

[`StopStrings`][lego.generate.StopStrings] decodes only the tail of each row's generated
tokens (enough tokens to hold the longest stop string, even when a character spans several
byte-level tokens), so checking costs the same at token 10 as at token 10,000.
"""

from __future__ import annotations

from collections.abc import Sequence

from lego.protocols import ConfigError, Tokenizer

__all__ = ["StopStrings"]

_BYTES_PER_CHAR = 4  # a UTF-8 character may be split over up to four byte-level tokens


class StopStrings:
    """Finds stop strings in the text generated so far.

    Args:
        tokenizer: Decodes generated ids (any [`Tokenizer`][lego.protocols.Tokenizer]).
        stop_strings: Non-empty texts; a row finishes once one appears in its generated text.

    Raises:
        ConfigError: No stop strings or an empty one.
    """

    def __init__(self, *, tokenizer: Tokenizer, stop_strings: Sequence[str]) -> None:
        given: tuple[object, ...] = tuple(stop_strings)
        if not given or any(not isinstance(s, str) or not s for s in given):
            raise ConfigError(
                f"stop strings must be non-empty texts, got {list(given)!r}",
                key="stop_strings",
            )
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self._window = _BYTES_PER_CHAR * max(len(s) for s in self.stop_strings) + 1

    def hit(self, generated: Sequence[int]) -> bool:
        """Whether the text of ``generated`` ends a stop string that its last token completed.

        Args:
            generated: The row's generated ids so far (not the prompt).

        Returns:
            True when a stop string appears in the decoded tail of the row.
        """
        if not generated:
            return False
        tail = self.tokenizer.decode(list(generated[-self._window :]))
        return any(s in tail for s in self.stop_strings)

    def cut(self, text: str) -> str:
        """Return ``text`` up to (without) the first stop string in it.

        Args:
            text: Generated text.

        Returns:
            The text before the earliest stop string, or ``text`` when none occurs.
        """
        found = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return text[: min(found)] if found else text
