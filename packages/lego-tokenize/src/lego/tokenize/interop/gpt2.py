"""GPT-2's original BPE files: ``encoder.json`` and ``vocab.bpe``, read and written.

OpenAI released GPT-2's tokenizer as two files:

- ``encoder.json``: a JSON object from each token, written as a byte-level string (see
  [`lego.tokenize.byte_level`][lego.tokenize.byte_level]), to its id, plus the special token
  ``<|endoftext|>`` (id 50256);
- ``vocab.bpe``: a ``#version: 0.2`` header line, then one merge per line, ``left right``
  (two byte-level strings separated by one space), in the order they were learned.

In GPT-2 the 256 single bytes are ids 0..255 (in the byte-level alphabet's order, so ``!``
is 0) and merge line *i* creates id 256 + *i*. Reading checks that the two files agree token
by token and that merge order follows id order, which is what lets the merges be used with
tiktoken's rank semantics (tiktoken checks the same).

GPT-2's own files give 50,256 ranks and ``{"<|endoftext|>": 50256}``::

    ranks, specials = read_gpt2_files("encoder.json", "vocab.bpe")

Written and read back:

    >>> import tempfile, pathlib
    >>> from lego.tokenize import RegexBPETokenizer
    >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    >>> tok.train(["hello hello world"], 260, workers=1)
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_gpt2_files(folder / "encoder.json", folder / "vocab.bpe",
    ...                  ranks=tok.mergeable_ranks, special_tokens=tok.special_tokens)
    >>> ranks, specials = read_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
    >>> ranks == dict(tok.mergeable_ranks), specials
    (True, {'<|endoftext|>': 259})
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping

from lego.protocols import (
    CompatibilityError,
    FormatError,
    SpecialTokens,
    atomic_write_text,
    read_json,
    read_text,
)
from lego.tokenize.byte_level import str_to_token, token_to_str
from lego.tokenize.interop.merges import recover_merges, token_splits

__all__ = ["read_gpt2_files", "write_gpt2_files", "VOCAB_BPE_HEADER"]

VOCAB_BPE_HEADER = "#version: 0.2"
"""The first line of GPT-2's ``vocab.bpe`` (readers skip a first line starting ``#version``)."""

_ENCODER = "GPT-2 encoder.json file"
_VOCAB = "GPT-2 vocab.bpe file"


def _read_encoder(path: str | os.PathLike[str]) -> dict[str, int]:
    data = read_json(path, what=_ENCODER)
    if not isinstance(data, dict):
        raise FormatError(
            f"the {_ENCODER} must hold a JSON object of token strings to ids, "
            f"found a JSON {type(data).__name__}",
            path=path,
            hint="pass GPT-2's encoder.json as the first file and vocab.bpe as the second",
        )
    by_id: dict[int, str] = {}
    for key, value in data.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FormatError(
                f"token {key!r} has the id {value!r}, not a non-negative integer",
                path=path,
                key=key,
                hint="encoder.json maps each token string to an integer id",
            )
        if value in by_id:
            raise FormatError(
                f"tokens {by_id[value]!r} and {key!r} share the id {value}",
                path=path,
                key=key,
                hint="every token needs its own id; the file is corrupt",
            )
        by_id[value] = key
    return data


def _read_merges(path: str | os.PathLike[str]) -> list[tuple[int, str, str]]:
    text = read_text(path, what=_VOCAB).removeprefix("\ufeff")  # a byte-order mark
    merges: list[tuple[int, str, str]] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")  # a file written on Windows
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise FormatError(
                f"expected a merge 'left right' (two tokens and one space), got {line!r}",
                path=path,
                line=number,
                hint="each line after the '#version' header holds one merge; the file may "
                "be truncated or not a vocab.bpe file",
            )
        merges.append((number, parts[0], parts[1]))
    if not merges:
        raise FormatError(
            f"the {_VOCAB} holds no merges",
            path=path,
            hint="vocab.bpe lists one merge per line after its '#version' header",
        )
    return merges


def _looks_like_a_missing_merge(key: str, ranks: Mapping[bytes, int]) -> bool:
    # A special token is an entry no merge creates. An entry that two ordinary tokens could
    # form is far more likely a merge whose line is missing (a truncated vocab.bpe).
    candidates = [key.encode("utf-8")]
    with contextlib.suppress(FormatError):  # not byte-level at all: certainly special
        candidates.append(str_to_token(key, key=key))
    return any(token_splits(candidate, ranks) for candidate in candidates)


def read_gpt2_files(
    encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str]
) -> tuple[dict[bytes, int], dict[str, int]]:
    """Read GPT-2's ``encoder.json`` and ``vocab.bpe`` into mergeable ranks and specials.

    Every merge must join two tokens already defined (a single byte or an earlier merge),
    and its result must be in ``encoder.json`` with an id above both parts and above the
    previous merge's, so that merge order and id order agree (tiktoken's rank semantics).
    Every ``encoder.json`` entry must be a single byte, a merge result, or a special token;
    an entry that two ordinary tokens could form but that no merge creates means a
    truncated or mismatched ``vocab.bpe``.

    Args:
        encoder_json: Path of ``encoder.json``.
        vocab_bpe: Path of ``vocab.bpe``.

    Returns:
        ``(ranks, special_tokens)``: token bytes to ids (the ids 0..n-1, e.g. 50,256 tokens
        for GPT-2) and the special tokens (``{"<|endoftext|>": 50256}`` for GPT-2).

    Raises:
        ConfigError: When a file does not exist or cannot be read.
        FormatError: When a file is not what it claims, or the two files disagree; the
            message names the file, the line or key, and what to do.
    """
    encoder = _read_encoder(encoder_json)
    merges = _read_merges(vocab_bpe)

    ranks: dict[bytes, int] = {}
    byte_keys: dict[bytes, str] = {}
    for b in range(256):
        key = token_to_str(bytes([b]))
        if key not in encoder:
            raise FormatError(
                f"the single byte 0x{b:02x} (written {key!r}) has no id",
                path=encoder_json,
                key=key,
                hint="GPT-2's encoder.json lists all 256 bytes; the file is incomplete or "
                "not a byte-level vocabulary",
            )
        ranks[bytes([b])] = encoder[key]
        byte_keys[bytes([b])] = key

    previous_id = -1
    previous_line = 0
    for number, left, right in merges:
        left_bytes = str_to_token(left, key=left)
        right_bytes = str_to_token(right, key=right)
        for part, part_bytes in ((left, left_bytes), (right, right_bytes)):
            if part_bytes not in ranks:
                raise FormatError(
                    f"the merge {left!r} + {right!r} uses {part!r}, which no earlier line creates",
                    path=vocab_bpe,
                    line=number,
                    hint="merges must be listed in the order they were learned; the file "
                    "is corrupt or reordered",
                )
        merged = left_bytes + right_bytes
        merged_key = left + right
        if merged in ranks:
            raise FormatError(
                f"the merge {left!r} + {right!r} creates {merged_key!r}, which an earlier "
                "line already creates",
                path=vocab_bpe,
                line=number,
                hint="each token is created by exactly one merge; the file is corrupt",
            )
        token_id = encoder.get(merged_key)
        if token_id is None:
            raise FormatError(
                f"the merge {left!r} + {right!r} creates {merged_key!r}, which is not in "
                "encoder.json",
                path=vocab_bpe,
                line=number,
                hint=f"use the encoder.json that belongs to this vocab.bpe "
                f"(encoder.json given: {os.fspath(encoder_json)})",
            )
        if token_id <= previous_id or token_id <= max(ranks[left_bytes], ranks[right_bytes]):
            raise FormatError(
                f"the merge {left!r} + {right!r} creates id {token_id}, not above the "
                f"ids of its parts and of the merge on line {previous_line} ({previous_id})",
                path=vocab_bpe,
                line=number,
                hint="merge order must follow id order (tiktoken's rank semantics); the two "
                "files do not belong together",
            )
        ranks[merged] = token_id
        previous_id = token_id
        previous_line = number

    known = {token_to_str(token) for token in ranks}
    leftovers = {key: value for key, value in encoder.items() if key not in known}
    for key, value in leftovers.items():
        if _looks_like_a_missing_merge(key, ranks):
            raise FormatError(
                f"encoder.json has the token {key!r} (id {value}) but vocab.bpe has no "
                "merge that creates it",
                path=vocab_bpe,
                key=key,
                hint="vocab.bpe looks truncated, or belongs to another encoder.json",
            )
    specials = dict(SpecialTokens(leftovers))

    n_ordinary = len(ranks)
    out_of_range = sorted(value for value in ranks.values() if value >= n_ordinary)
    if out_of_range:
        token = next(t for t, v in ranks.items() if v == out_of_range[0])
        raise FormatError(
            f"the ordinary tokens' ids are not 0..{n_ordinary - 1}: {token_to_str(token)!r} "
            f"has id {out_of_range[0]}",
            path=encoder_json,
            key=token_to_str(token),
            hint="ordinary token ids must be contiguous from 0, special tokens after them",
        )
    return ranks, specials


def write_gpt2_files(
    encoder_json: str | os.PathLike[str],
    vocab_bpe: str | os.PathLike[str],
    *,
    ranks: Mapping[bytes, int],
    special_tokens: Mapping[str, int] | None = None,
) -> None:
    """Write mergeable ranks and special tokens as GPT-2's ``encoder.json`` + ``vocab.bpe``.

    [`read_gpt2_files`][lego.tokenize.interop.gpt2.read_gpt2_files] reads them back to the
    same ranks and specials. Merges are written in id order, one per multi-byte token (the
    pair tiktoken's algorithm ends with, see
    [`merge_for`][lego.tokenize.interop.merges.merge_for]). Where the 256 single bytes have
    GPT-2's ids (as in GPT-2 itself), ``tiktoken``'s own GPT-2 loader accepts the files too.
    Both files are written atomically.

    Args:
        encoder_json: Where to write ``encoder.json``.
        vocab_bpe: Where to write ``vocab.bpe``.
        ranks: Token bytes to ids 0..n-1 (a byte-level BPE vocabulary).
        special_tokens: Special-token strings to ids (``{"<|endoftext|>": 50256}`` for
            GPT-2).

    Raises:
        CompatibilityError: When the vocabulary cannot be written as merges (a token that
            two lower-ranked tokens do not form), the ids are not 0..n-1, or a special
            token collides with an ordinary token's string or could be mistaken for a
            missing merge.
        ConfigError: When a file cannot be written.
    """
    merges = recover_merges(ranks)
    specials = SpecialTokens(special_tokens or {})
    n_ordinary = len(ranks)
    bad = sorted(rank for rank in ranks.values() if rank >= n_ordinary)
    if bad:
        raise CompatibilityError(
            f"the ordinary token ids must be 0..{n_ordinary - 1}, found id {bad[0]}",
            hint="renumber the vocabulary contiguously before writing GPT-2 files",
        )
    encoder: dict[str, int] = {
        token_to_str(token): rank for token, rank in sorted(ranks.items(), key=lambda x: x[1])
    }
    for token, token_id in specials.items():
        if token in encoder:
            raise CompatibilityError(
                f"the special token {token!r} is spelled like an ordinary token",
                key=token,
                hint="GPT-2's encoder.json holds both in one object; rename the special token",
            )
        if token_id in ranks.values():
            raise CompatibilityError(
                f"the special token {token!r} has id {token_id}, an ordinary token's id",
                key=token,
                hint="give special tokens ids after the ordinary vocabulary",
            )
        if _looks_like_a_missing_merge(token, ranks):
            raise CompatibilityError(
                f"the special token {token!r} can be formed from two ordinary tokens, so a "
                "reader of GPT-2's files would take it for a merge that is missing",
                key=token,
                hint="use a special token string that the vocabulary does not nearly "
                "contain, such as '<|endoftext|>'",
            )
        encoder[token] = token_id
    lines = [VOCAB_BPE_HEADER]
    lines.extend(f"{token_to_str(left)} {token_to_str(right)}" for left, right in merges)
    atomic_write_text(encoder_json, json.dumps(encoder, ensure_ascii=False), what=_ENCODER)
    atomic_write_text(vocab_bpe, "\n".join(lines) + "\n", what=_VOCAB)
