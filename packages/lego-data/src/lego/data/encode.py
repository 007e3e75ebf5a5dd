r"""Segments to token ids and shifted, masked labels, with any tokenizer.

[`encode_segments()`][lego.data.encode.encode_segments] is the one place where instruction
and chat data meet a [`Tokenizer`][lego.protocols.Tokenizer]:

- special segments become their id from ``tokenizer.special_tokens`` (a missing one is a
  [`CompatibilityError`][lego.protocols.CompatibilityError]); text is never scanned for
  special-token strings, so a user message containing ``"<|im_end|>"`` stays text;
- the plain text between two special tokens is encoded in one ``encode`` call, exactly as
  encoding the whole rendered string would (tokenizers split on special tokens first), even
  when the text mixes masked and trained pieces (``"assistant\n"`` + the answer). The
  boundary is found by encoding the masked prefix: the tokens it shares with the whole are
  masked, and a token that straddles the boundary counts as trained;
- the token sequence ``s`` of length ``n`` becomes ``input_ids = s[:-1]`` and
  ``labels[t] = s[t + 1]`` when token ``t + 1`` is trained, else
  [`IGNORE_INDEX`][lego.protocols.IGNORE_INDEX] (``-100``): labels are already shifted, as
  [`LMBatch`][lego.protocols.LMBatch] wants, and a packed sequence never predicts across a
  document boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lego.data.alpaca import alpaca_segments
from lego.protocols import IGNORE_INDEX, ConfigError, DataError, Tokenizer
from lego.protocols.chat import (
    ChatTemplate,
    Segment,
    TrainOn,
    encode_text,
    get_chat_template,
    special_token_id,
)

__all__ = [
    "TokenizedExample",
    "encode_segments",
    "encode_chat",
    "encode_alpaca",
    "special_token_id",
]


@dataclass(frozen=True)
class TokenizedExample:
    """One training example: inputs and shifted labels of the same length.

    Attributes:
        input_ids: Token ids, length ``n``.
        labels: ``labels[t]`` is the id that follows ``input_ids[t]``, or ``-100`` where it is
            not trained; length ``n``.
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise DataError(
                f"input_ids has {len(self.input_ids)} ids but labels has {len(self.labels)}",
                key="labels",
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        """Labels that are not ``-100`` (the tokens the loss counts)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _encode_chunk(tokenizer: Tokenizer, pieces: list[Segment]) -> tuple[list[int], list[bool]]:
    """Encode adjacent text segments as one text; split the trained flags at the boundaries."""
    runs: list[tuple[str, bool]] = []  # adjacent pieces with the same flag, merged
    for piece in pieces:
        if runs and runs[-1][1] == piece.train:
            runs[-1] = (runs[-1][0] + piece.text, piece.train)
        else:
            runs.append((piece.text, piece.train))
    ids = encode_text(tokenizer, "".join(text for text, _ in runs))
    flags: list[bool] = []
    prefix = ""
    for text, trained in runs[:-1]:
        # Tokens shared with the encoded prefix lie wholly inside it; a token that
        # straddles the boundary goes to the next run.
        prefix += text
        cut = max(_common_prefix(encode_text(tokenizer, prefix), ids), len(flags))
        flags.extend([trained] * (cut - len(flags)))
    flags.extend([runs[-1][1]] * (len(ids) - len(flags)))
    return ids, flags


def encode_segments(
    segments: Sequence[Segment],
    tokenizer: Tokenizer,
    *,
    max_length: int | None = None,
    needed_by: str = "this template",
) -> TokenizedExample:
    """Tokenize segments into ``input_ids`` and shifted, masked ``labels``.

    Args:
        segments: Rendered pieces, e.g. from
            [`ChatTemplate.segments()`][lego.protocols.chat.ChatTemplate.segments].
        tokenizer: Any [`Tokenizer`][lego.protocols.Tokenizer]; special segments must be in
            its ``special_tokens``.
        max_length: Keep at most this many input positions (the token sequence is cut to
            ``max_length + 1`` tokens before shifting); None keeps everything.
        needed_by: Who needs the special tokens, for error messages.

    Returns:
        The example; ``len(example) == n_tokens - 1``.

    Raises:
        CompatibilityError: When a special token is missing from the tokenizer.
        DataError: When the segments encode to fewer than two tokens.
        ConfigError: When ``max_length < 1``.
    """
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be at least 1, got {max_length}", key="max_length")
    ids: list[int] = []
    train: list[bool] = []
    chunk: list[Segment] = []

    def flush() -> None:
        if chunk:
            chunk_ids, chunk_flags = _encode_chunk(tokenizer, chunk)
            ids.extend(chunk_ids)
            train.extend(chunk_flags)
            chunk.clear()

    for segment in segments:
        if segment.special:
            flush()
            ids.append(special_token_id(tokenizer, segment.text, needed_by=needed_by))
            train.append(segment.train)
        else:
            chunk.append(segment)
    flush()
    if max_length is not None:
        del ids[max_length + 1 :], train[max_length + 1 :]
    if len(ids) < 2:
        raise DataError(
            f"the example encodes to {len(ids)} token(s); at least 2 are needed for one "
            "input and its label"
        )
    labels = [ids[t + 1] if train[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return TokenizedExample(input_ids=ids[:-1], labels=labels)


def encode_chat(
    messages: Sequence[Mapping[str, object]],
    tokenizer: Tokenizer,
    *,
    template: str | ChatTemplate = "chatml",
    max_length: int | None = None,
    train_on: TrainOn = "assistant",
) -> TokenizedExample:
    """Render a conversation with a chat template and tokenize it for training.

    Args:
        messages: ``{"role", "content"}`` messages.
        tokenizer: Any tokenizer holding the template's special tokens.
        template: ``"chatml"``, ``"llama3"`` or a
            [`ChatTemplate`][lego.protocols.chat.ChatTemplate].
        max_length: Keep at most this many input positions.
        train_on: Train every assistant message, or only the last one.

    Returns:
        The example, with only assistant contents and their end-of-turn tokens trained.

    Raises:
        DataError: On an invalid conversation.
        CompatibilityError: When the tokenizer lacks one of the template's special tokens.
    """
    chat = get_chat_template(template)
    segments = chat.segments(messages, train_on=train_on)
    return encode_segments(
        segments, tokenizer, max_length=max_length, needed_by=f"the {chat.name} template"
    )


def encode_alpaca(
    instruction: str,
    output: str,
    tokenizer: Tokenizer,
    *,
    input: str = "",
    eos_token: str | None = "<|endoftext|>",
    max_length: int | None = None,
) -> TokenizedExample:
    """Format an Alpaca record and tokenize it: the prompt masked, output and EOS trained.

    Args:
        instruction: The task.
        output: The response.
        tokenizer: Any tokenizer (holding ``eos_token`` when one is given).
        input: Extra context; empty selects the no-input prompt.
        eos_token: The special token appended after the output; None appends nothing.
        max_length: Keep at most this many input positions.

    Returns:
        The example.

    Raises:
        CompatibilityError: When ``eos_token`` is not one of the tokenizer's special tokens.
    """
    segments = alpaca_segments(instruction, input, output, eos_token=eos_token)
    return encode_segments(
        segments, tokenizer, max_length=max_length, needed_by="the Alpaca format's end of text"
    )
