"""Stop and pad tokens: the check that a fine-tuned model will stop, and the pad id.

A model fine-tuned on chat data learns to end every answer with the template's end-of-turn
token (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3) or, for plain text, with the
tokenizer's end-of-sequence token. Generation stops only on the ids of the model's
generation config (transformers' ``generation_config.json`` ``eos_token_id``). When the two
disagree the model "never stops": it writes the end-of-turn token and carries on. The
common causes are a base model whose tokenizer EOS is ``<|endoftext|>`` fine-tuned with
ChatML, and a template whose end-of-turn token is masked out of the labels.
[`check_stop_tokens()`][lego.align.tokens.check_stop_tokens] refuses such a setup before
training, naming the tokenizer's EOS, the template's end-of-turn token and the generation
config's stop tokens. (lego-data's templates always train the end-of-turn token; the
trainers check that every completion ends with a trained stop token.)

[`resolve_pad_id()`][lego.align.tokens.resolve_pad_id] picks the padding id: padding is
masked everywhere, but it must not be EOS or end-of-turn (a collator that sees the id could
not tell padding from a real end), so a tokenizer without a pad token gets a clear error
that names one to use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from lego.protocols import ConfigError, DataError, Tokenizer, read_json
from lego.protocols.chat import ChatTemplate

__all__ = [
    "StopTokens",
    "check_stop_tokens",
    "resolve_pad_id",
    "preference_pad_id",
    "generation_stop_ids",
]

_PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<|padding|>")


@dataclasses.dataclass(frozen=True)
class StopTokens:
    """The ids that end a completion, as trained and as generation stops on them.

    Attributes:
        eos_id: The tokenizer's end-of-sequence id (``eos_token``).
        end_of_turn_id: The template's end-of-turn id, or None without a template (plain
            prompt / completion text, which ends with ``eos_id``).
        trained_end_id: The id every completion ends with in the labels: the end-of-turn
            id with a template, else the EOS id.
        generation_ids: The ids generation stops on (the generation config's, or just the
            EOS id when none was given).
    """

    eos_id: int
    end_of_turn_id: int | None
    trained_end_id: int
    generation_ids: tuple[int, ...]


def _name(tokenizer: Tokenizer, token_id: int) -> str:
    for token, value in tokenizer.special_tokens.items():
        if value == token_id:
            return f"{token!r} ({token_id})"
    return f"id {token_id}"


def _special_id(tokenizer: Tokenizer, token: str, key: str, who: str) -> int:
    specials = tokenizer.special_tokens
    if token not in specials:
        known = ", ".join(sorted(specials)) or "none"
        raise ConfigError(
            f"{who} {token!r} is not a special token of the tokenizer (its special tokens: "
            f"{known})",
            key=key,
            hint="name one of the tokenizer's special tokens, or use a tokenizer that has it",
        )
    return specials[token]


def check_stop_tokens(
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    *,
    eos_token: str,
    generation_eos_token_ids: Sequence[int] | None = None,
) -> StopTokens:
    """Check that the token a completion is trained to end with stops generation.

    The rule: the trained end token (the template's end-of-turn token, or ``eos_token``
    without a template) and the tokenizer's ``eos_token`` must both be among the ids
    generation stops on: ``generation_eos_token_ids`` (the model's generation config), or
    ``eos_token`` alone when no generation config is given.

    Args:
        tokenizer: Any tokenizer (its ``special_tokens`` hold the tokens).
        template: The chat template, or None for plain text completions.
        eos_token: The tokenizer's end-of-sequence token, e.g. ``"<|endoftext|>"``.
        generation_eos_token_ids: The generation config's ``eos_token_id`` (one or several
            ids; see [`generation_stop_ids()`][lego.align.tokens.generation_stop_ids]), or
            None when unknown.

    Returns:
        The ids.

    Raises:
        ConfigError: ``eos_token`` or the template's end-of-turn token is no special token
            of the tokenizer, the template has no end-of-turn token, or the three disagree
            (the message names all three and how to fix it).

    Example:
        >>> from lego.protocols.chat import ChatMLTemplate
        >>> class Tok:
        ...     special_tokens = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
        >>> check_stop_tokens(Tok(), ChatMLTemplate(), eos_token="<|im_end|>").trained_end_id
        2
        >>> check_stop_tokens(Tok(), ChatMLTemplate(), eos_token="<|endoftext|>")
        Traceback (most recent call last):
        ...
        lego.protocols.errors.ConfigError: the stop tokens disagree: ...
    """
    eos_id = _special_id(tokenizer, eos_token, "eos_token", "eos_token")
    end_of_turn_id: int | None = None
    if template is not None:
        end_of_turn = getattr(template, "end_of_turn", None)
        if not isinstance(end_of_turn, str) or not end_of_turn:
            raise ConfigError(
                f"the chat template {getattr(template, 'name', type(template).__name__)!r} has "
                "no end-of-turn token: a model fine-tuned with it could never learn to stop",
                key="template",
                hint="give the template an end_of_turn special token that closes assistant "
                "messages (trained), e.g. ChatML's '<|im_end|>'",
            )
        end_of_turn_id = _special_id(
            tokenizer, end_of_turn, "template", f"the {template.name} template's end-of-turn token"
        )
    trained_end = end_of_turn_id if end_of_turn_id is not None else eos_id
    if generation_eos_token_ids is None:
        stops: tuple[int, ...] = (eos_id,)
        given = False
    else:
        stops = tuple(int(i) for i in generation_eos_token_ids)
        given = True
        if not stops:
            raise ConfigError(
                "generation_eos_token_ids is empty: generation would never stop",
                key="generation_eos_token_ids",
                hint="pass the generation config's eos_token_id, or None",
            )
    missing = [i for i in dict.fromkeys((trained_end, eos_id)) if i not in stops]
    if missing:
        turn = (
            f"the {template.name} template ends each turn with {_name(tokenizer, trained_end)}"
            if template is not None
            else f"plain completions end with {_name(tokenizer, trained_end)}"
        )
        where = (
            "the generation config stops on " + ", ".join(_name(tokenizer, i) for i in stops)
            if given
            else f"no generation config was given, so generation stops on EOS only ({eos_id})"
        )
        wanted = list(dict.fromkeys((*stops, *missing)))
        raise ConfigError(
            f"the stop tokens disagree: the tokenizer's EOS is {_name(tokenizer, eos_id)}, "
            f"{turn}, and {where}: the fine-tuned model would not stop at the end of its "
            "answers",
            key="generation_eos_token_ids",
            hint=f"make generation stop on every one of them (generation_eos_token_ids: "
            f"{wanted}, and the same eos_token_id in the model's generation_config.json)"
            + (
                f", or set eos_token to the template's end-of-turn token {template.end_of_turn!r}"
                if template is not None and not given
                else ""
            ),
        )
    return StopTokens(
        eos_id=eos_id,
        end_of_turn_id=end_of_turn_id,
        trained_end_id=trained_end,
        generation_ids=stops,
    )


def resolve_pad_id(
    tokenizer: Tokenizer, pad_token: str | None, *, avoid: Iterable[int] = ()
) -> int:
    """The id that fills padding: ``pad_token``, or the tokenizer's own pad token.

    Args:
        tokenizer: Any tokenizer.
        pad_token: A special token to pad with, or None to look for a pad token among the
            tokenizer's special tokens (``<|pad|>``, ``<pad>``, ``[PAD]``,
            ``<|finetune_right_pad_id|>``, ``<|padding|>``).
        avoid: Ids padding must not use: the EOS and end-of-turn ids (``StopTokens``
            ``eos_id`` and ``trained_end_id``), which end real sequences.

    Returns:
        The pad id.

    Raises:
        ConfigError: ``pad_token`` is no special token of the tokenizer or is one of
            ``avoid``; or the tokenizer has no pad token (the message names one to use).

    Example:
        >>> class Tok:
        ...     special_tokens = {"<|endoftext|>": 0, "<|im_end|>": 1, "<|pad|>": 2}
        >>> resolve_pad_id(Tok(), None, avoid=(0, 1))
        2
    """
    taken = set(avoid)
    specials: Mapping[str, int] = tokenizer.special_tokens
    if pad_token is not None:
        pad_id = _special_id(tokenizer, pad_token, "pad_token", "pad_token")
        if pad_id in taken:
            raise ConfigError(
                f"pad_token {pad_token!r} is a stop token (EOS or end-of-turn): padding would "
                "look like the end of a sequence",
                key="pad_token",
                hint=_pad_hint(specials, taken),
            )
        return pad_id
    for name in _PAD_NAMES:
        if name in specials and specials[name] not in taken:
            return specials[name]
    raise ConfigError(
        "the tokenizer has no pad token (none of " + ", ".join(_PAD_NAMES) + ")",
        key="pad_token",
        hint=_pad_hint(specials, taken),
    )


def preference_pad_id(
    tokenizer: Tokenizer, template: ChatTemplate | None, *, eos_token: str, pad_token: str | None
) -> int:
    """The pad id for preference data: neither the EOS nor the template's end-of-turn id.

    Args:
        tokenizer: Any tokenizer.
        template: The chat template, or None (Alpaca records end with ``eos_token``).
        eos_token: The end token of Alpaca responses.
        pad_token: As in [`resolve_pad_id()`][lego.align.tokens.resolve_pad_id].

    Returns:
        The pad id.

    Raises:
        ConfigError: As [`resolve_pad_id()`][lego.align.tokens.resolve_pad_id].
    """
    specials = tokenizer.special_tokens
    ends = [specials[eos_token]] if eos_token in specials else []
    end_of_turn = getattr(template, "end_of_turn", None)
    if isinstance(end_of_turn, str) and end_of_turn in specials:
        ends.append(specials[end_of_turn])
    return resolve_pad_id(tokenizer, pad_token, avoid=ends)


def _pad_hint(specials: Mapping[str, int], taken: set[int]) -> str:
    free = [token for token, i in sorted(specials.items(), key=lambda kv: kv[1]) if i not in taken]
    if free:
        return (
            f"set pad_token: {free[-1]!r} (any special token that is not EOS or end-of-turn "
            "works: padding is never attended to nor trained)"
        )
    return "add a '<|pad|>' special token to the tokenizer and set pad_token: '<|pad|>'"


def generation_stop_ids(model_dir: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The ``eos_token_id`` of a model directory's ``generation_config.json``.

    Args:
        model_dir: A transformers / lego-arch model directory.

    Returns:
        The ids (one or several), or None when the file or the field is absent.

    Raises:
        FormatError: The file is not valid JSON.
        ConfigError: ``eos_token_id`` is neither an integer nor a list of integers.
    """
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return None
    data = read_json(path, what="generation config")
    value = data.get("eos_token_id") if isinstance(data, Mapping) else None
    if value is None:
        return None
    values = [value] if isinstance(value, int) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
        raise ConfigError(
            f"eos_token_id must be an integer or a list of integers, got {value!r}",
            path=path,
            key="eos_token_id",
        )
    return tuple(values)


def pair_count(batch: Mapping[str, Tensor], *, what: str, collator: str) -> int:
    """The pairs of a ``[chosen; rejected]`` batch: half its rows.

    Args:
        batch: ``input_ids`` ``(2P, L)``.
        what: The batch's kind for the message (``"DPO"``, ``"reward"``).
        collator: The collator that builds such batches, named in the hint.

    Returns:
        ``P``.

    Raises:
        DataError: An odd number of rows.
    """
    rows = int(batch["input_ids"].shape[0])
    if rows % 2:
        raise DataError(
            f"a {what} batch needs [chosen; rejected] rows, got {rows} rows",
            key="input_ids",
            hint=f"collate pairs with {collator}",
        )
    return rows // 2
