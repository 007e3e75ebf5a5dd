r"""Streaming: text out as soon as it is complete UTF-8.

A byte-level BPE token can end in the middle of a multi-byte character (``"é"`` is two
bytes, an emoji four), so decoding each token alone would print ``"\\ufffd"`` halves.
[`TextStreamDecoder`][lego.generate.TextStreamDecoder] turns a growing list of ids into text
pieces that are always whole characters:

- with a tokenizer that has ``decode_bytes(ids) -> bytes`` (lego-tokenize's byte-level BPE)
  it feeds each token's bytes to an incremental UTF-8 decoder, which holds back an
  unfinished character until its last byte arrives;
- with any other [`Tokenizer`][lego.protocols.Tokenizer] it decodes a short window of recent
  ids and emits the new text only when it does not end in ``"\\ufffd"`` (the window starts one
  emission back, so tokenizers whose decoding depends on the previous token stay correct).

[`stream()`][lego.generate.stream] runs a generation and yields those pieces. It is where a
tokenizer meets a model, so it compares their vocabularies before the first step
([`check_tokenizer()`][lego.generate.streaming.check_tokenizer]): a tokenizer with more ids
than the model is refused (the model cannot read its ids), and when the model has more ids
than the tokenizer (a vocabulary padded past the tokenizer's, as GPT-2's 50304 rows for
50257 tokens or Qwen 3's 151936 for 151669) the ids the tokenizer cannot decode are never
generated, instead of failing when one is sampled mid-stream.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from lego.generate.config import GenerationConfig
from lego.generate.generate import _eval_mode, decode_rows, start_decoding
from lego.generate.linears import linear_kernels
from lego.protocols import (
    CausalLM,
    CompatibilityError,
    ConfigError,
    DataError,
    LogitsProcessor,
    Tokenizer,
)

__all__ = ["TextStreamDecoder", "check_tokenizer", "stream"]

_REPLACEMENT = "\ufffd"


class TextStreamDecoder:
    """Turns ids arriving one by one into text pieces made of whole characters.

    Args:
        tokenizer: Any [`Tokenizer`][lego.protocols.Tokenizer].
        skip_ids: Ids never decoded (e.g. end-of-sequence and padding ids).

    Example:
        A byte-level tokenizer splits "é" over two ids; the piece appears once it is whole:

        >>> class Bytes:
        ...     vocab_size, special_tokens = 256, {}
        ...     def encode(self, text): return list(text.encode("utf-8"))
        ...     def decode(self, ids): return bytes(ids).decode("utf-8", errors="replace")
        >>> tokenizer = Bytes()
        >>> ids = tokenizer.encode("café!")
        >>> decoder = TextStreamDecoder(tokenizer)
        >>> pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
        >>> pieces
        ['c', 'a', 'f', '', 'é', '!', '']
        >>> "".join(pieces) == tokenizer.decode(ids)
        True
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_ids = frozenset(skip_ids)
        decode_bytes = getattr(tokenizer, "decode_bytes", None)
        self._decode_bytes: Callable[[list[int]], bytes] | None = (
            decode_bytes if callable(decode_bytes) else None
        )
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly ``""``).

        Args:
            token_id: The next generated id.

        Returns:
            New whole characters (empty while a character is unfinished).
        """
        if token_id in self.skip_ids:
            return ""
        if self._decode_bytes is not None:
            return str(self._utf8.decode(self._decode_bytes([token_id])))
        self._ids.append(token_id)
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        r"""Return whatever is held back (an unfinished character becomes ``"\ufffd"``)."""
        if self._decode_bytes is not None:
            return str(self._utf8.decode(b"", final=True))
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


def check_tokenizer(model: CausalLM, tokenizer: Tokenizer) -> int | None:
    """Compare a tokenizer's vocabulary with a model's, before anything is generated.

    Args:
        model: The model (its ``config.vocab_size``).
        tokenizer: The tokenizer (its ``vocab_size``).

    Returns:
        None when the sizes are equal; the tokenizer's size when the model has more ids
        (the ids from there on cannot be decoded: a stream never generates them).

    Raises:
        CompatibilityError: The tokenizer has more ids than the model: it is not the
            tokenizer the model was trained with.

    Example:
        >>> from lego.protocols import ModelConfig
        >>> class Model:
        ...     config = ModelConfig(vocab_size=50304, context_length=1024)
        >>> class Tokenizer:
        ...     vocab_size, special_tokens = 50257, {}
        >>> check_tokenizer(Model(), Tokenizer())  # a padded vocabulary: 47 ids never made
        50257
    """
    model_size = int(model.config.vocab_size)
    size = int(tokenizer.vocab_size)
    if size > model_size:
        raise CompatibilityError(
            f"the tokenizer has {size} ids but the model's vocabulary only {model_size}: "
            "it is not the tokenizer the model was trained with",
            key="tokenizer",
            hint="use the model's own tokenizer (the one saved beside it, or the one it was "
            "trained with)",
        )
    return size if size < model_size else None


class _DecodableOnly:
    """Ban the ids a tokenizer cannot decode (those from its vocabulary size on)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        out = scores.clone()  # (B, V)
        out[:, self.size :] = float("-inf")
        return out


def _prompt_tensor(tokenizer: Tokenizer, prompt: str | Sequence[int] | Tensor) -> Tensor:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise DataError(
                "the prompt is empty",
                tensor="prompt",
                hint="give some text to continue",
            )
        return torch.tensor([ids], dtype=torch.long)
    if isinstance(prompt, Tensor):
        if prompt.ndim == 2 and prompt.shape[0] != 1:
            raise ConfigError(
                f"stream() generates one sequence, got a batch of {prompt.shape[0]}",
                key="prompt",
                hint="call stream() once per prompt, or generate() for batches",
            )
        return prompt.reshape(1, -1)
    return torch.tensor([list(prompt)], dtype=torch.long)


def stream(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int] | Tensor,
    *,
    generator: torch.Generator | None = None,
    logits_processor: Sequence[LogitsProcessor] = (),
    draft_model: CausalLM | None = None,
    generation_config: GenerationConfig | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> Iterator[str]:
    """Generate from one prompt and yield the text as it is produced, whole characters only.

    End-of-sequence ids are not decoded; with stop strings, text that might begin a stop
    string is held back until it is clear, and the stream ends before the stop string.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM].
        tokenizer: Encodes a text prompt and decodes the new tokens.
        prompt: Text, a list of ids, or a ``(P,)`` / ``(1, P)`` tensor.
        generator: Random generator for sampling.
        logits_processor: Extra processors.
        draft_model: Draft model for speculative decoding.
        generation_config: A config to start from.
        device: Where to put the prompt (default: the model's first parameter's device).
        **options: Any [`GenerationConfig`][lego.generate.GenerationConfig] field
            (``max_new_tokens``, ``temperature``, ``eos_token_id``, ``stop_strings``...).

    Yields:
        Pieces of text; joined, they are the decoded new tokens (without end-of-sequence ids,
        cut before a stop string).

    Raises:
        ConfigError: Unknown options, beam search, or a batch of prompts.
        CompatibilityError: The tokenizer has more ids than the model (see
            [`check_tokenizer()`][lego.generate.streaming.check_tokenizer]; a model with more
            ids than the tokenizer never generates the ones it cannot decode).
        DataError: An empty prompt, or prompt ids outside the model's vocabulary.
    """
    config = GenerationConfig.from_options(generation_config, **options)
    if config.num_beams > 1:
        raise ConfigError(
            "stream() does not run beam search (the best beam is known only at the end)",
            key="num_beams",
            hint="use generate(num_beams=...) and decode its result",
        )
    ids = _prompt_tensor(tokenizer, prompt)
    decodable = check_tokenizer(model, tokenizer)
    if decodable is not None:
        logits_processor = [*logits_processor, _DecodableOnly(decodable)]
    if device is None:
        parameters = getattr(model, "parameters", None)
        first = next(iter(parameters()), None) if callable(parameters) else None
        device = first.device if isinstance(first, Tensor) else None
    if device is not None:
        ids = ids.to(device)
    skip = set(config.eos_ids)
    decoder = TextStreamDecoder(tokenizer, skip_ids=sorted(skip))
    stops = config.stop_string_list
    hold = max((len(s) for s in stops), default=1) - 1
    pending = ""
    was_training = _eval_mode(model)
    try:
        # The engine's routing of the model's nn.Linear calls, restored when the stream
        # ends, fails or is closed.
        routing = linear_kernels(
            model,
            native=config.native_kernels,
            pack=config.pack_weights,
            rows=decode_rows(model, ids, config, speculative=draft_model is not None),
        )
        with routing:
            # inference mode per step: never left on in the caller's code between two pieces
            with torch.inference_mode():
                run = start_decoding(
                    model,
                    ids,
                    config,
                    logits_processor=logits_processor,
                    tokenizer=tokenizer,
                    generator=generator,
                    draft_model=draft_model,
                )
                steps = iter(run)
            finished = False
            while not finished:
                with torch.inference_mode():
                    chunk = next(steps, None)
                if chunk is None:
                    break
                for token in chunk[0].tolist():
                    pending += decoder.push(token)
                    if token in skip:
                        finished = True
                        break
                if stops:
                    cut = _find_stop(pending, stops)
                    if cut is not None:
                        if pending[:cut]:
                            yield pending[:cut]
                        return
                    safe = max(0, len(pending) - hold)
                    if safe:
                        yield pending[:safe]
                        pending = pending[safe:]
                elif pending:
                    yield pending
                    pending = ""
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)
    pending += decoder.flush()
    cut = _find_stop(pending, stops) if stops else None
    if cut is not None:
        pending = pending[:cut]
    if pending:
        yield pending


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
