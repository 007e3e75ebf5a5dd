"""HuggingFace ``tokenizer.json`` files for byte-level BPE, read and written.

A ``tokenizer.json`` describes a pipeline: a normalizer, a pre-tokenizer (how text is split
into words), a model (here ``BPE``: a vocabulary of byte-level strings and an ordered list
of merges), a post-processor and a decoder, plus the *added tokens* (special tokens) matched
in the text before anything else. A lego-tokenize regex BPE maps onto it as:

- pre-tokenizer: ``Sequence[Split(Regex(pattern), "Isolated"), ByteLevel(use_regex=False)]``
  (the pattern written in Oniguruma's dialect, see
  [`to_onig`][lego.tokenize.interop.hf_regex.to_onig]);
- model: ``BPE`` with the vocabulary as byte-level strings (see
  [`lego.tokenize.byte_level`][lego.tokenize.byte_level]), ``ignore_merges: true``
  (a word that is itself a token is that token, as in tiktoken), and the merges;
- decoder: ``ByteLevel``; added tokens: the special tokens, ``special: true``, also listed in
  the vocabulary so they keep their ids.

The two engines apply merges differently. tiktoken merges, within a word, the adjacent pair
whose *concatenation* has the lowest rank, so a token forms from *any* two tokens that spell
it; HuggingFace merges the adjacent pair that comes first in its merge list, and only the
listed pairs. The writer therefore lists, for each token in rank order, every split of it
into two tokens (the one BPE training made first), so both engines form the same tokens in
the same order. On real text the ids agree exactly (the test suite checks GPT-2's and
cl100k_base's vocabularies on whole corpora and random text); the one case a merge list
cannot express is a word in which two *different* splits of the same token overlap, e.g.
``[" ", "  ", " "]`` for three spaces, where tiktoken merges the leftmost and HuggingFace the
one listed first.

Example:
    >>> import tempfile, pathlib
    >>> from lego.tokenize import RegexBPETokenizer
    >>> from lego.tokenize.patterns import GPT4_PATTERN
    >>> tok = RegexBPETokenizer("gpt4")
    >>> tok.train(["hello hello world"], 260, special_tokens=["<|endoftext|>"], workers=1)
    >>> ranks = dict(tok.mergeable_ranks)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tokenizer.json"
    >>> write_hf_tokenizer_json(path, ranks=ranks, pattern=GPT4_PATTERN,
    ...                         special_tokens=tok.special_tokens)
    >>> ranks2, pattern2, specials2 = read_hf_tokenizer_json(path)
    >>> (ranks2, pattern2, specials2) == (ranks, GPT4_PATTERN, dict(tok.special_tokens))
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lego.protocols import (
    CompatibilityError,
    FormatError,
    SpecialTokens,
    atomic_write_text,
    read_json,
)
from lego.tokenize.byte_level import str_to_token, token_to_str
from lego.tokenize.interop.hf_regex import from_onig, to_onig
from lego.tokenize.interop.merges import check_ranks, merge_for, token_splits
from lego.tokenize.patterns import GPT2_PATTERN, compile_pattern

__all__ = ["read_hf_tokenizer_json", "write_hf_tokenizer_json", "hf_merges"]

_WHAT = "HuggingFace tokenizer.json file"
_SUPPORTED = (
    "lego-tokenize reads byte-level BPE tokenizer.json files (GPT-2, GPT-4-style and LLaMA 3 "
    "tokenizers): model BPE, no normalizer, and a ByteLevel pre-tokenizer alone or after one "
    "regex Split"
)


def hf_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """List the merges a HuggingFace BPE needs to encode like tiktoken with these ranks.

    For each multi-byte token in rank order: the split BPE training made (see
    [`merge_for`][lego.tokenize.interop.merges.merge_for]) first, then every other split
    into two tokens of the vocabulary, left part shortest first.

    Args:
        ranks: Token bytes to ids.

    Returns:
        ``(left, right)`` pairs in priority order.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        splits = token_splits(token, ranks)
        if not splits:
            continue  # only whole-word lookup (ignore_merges) forms it, in both engines
        first = merge_for(token, ranks)
        if first is not None:
            merges.append(first)
        merges.extend(pair for pair in splits if pair != first)
    return merges


def write_hf_tokenizer_json(
    path: str | os.PathLike[str],
    *,
    ranks: Mapping[bytes, int],
    pattern: str,
    special_tokens: Mapping[str, int] | None = None,
) -> None:
    """Write a byte-level BPE as a HuggingFace ``tokenizer.json`` (atomically).

    ``tokenizers.Tokenizer.from_file(path)`` loads it and encodes to the same ids as
    tiktoken with the same ranks, pattern and specials (see the module notes), and
    ``transformers.PreTrainedTokenizerFast(tokenizer_file=path)`` wraps it.
    [`read_hf_tokenizer_json`][lego.tokenize.interop.hf.read_hf_tokenizer_json] reads back
    exactly the same ranks, pattern and specials.

    Args:
        path: The file to write.
        ranks: Token bytes to ids 0..n-1 (a byte-level BPE vocabulary).
        pattern: The split regex (tiktoken's dialect).
        special_tokens: Special-token strings to ids.

    Raises:
        CompatibilityError: When the ranks are malformed, or a special token's string or id
            is an ordinary token's.
        ConfigError: When the pattern does not compile or the file cannot be written.
    """
    check_ranks(ranks)
    compile_pattern(pattern)
    specials = SpecialTokens(special_tokens or {})
    vocab: dict[str, int] = {
        token_to_str(token): rank for token, rank in sorted(ranks.items(), key=lambda x: x[1])
    }
    ordinary_ids = set(ranks.values())
    for token, token_id in specials.items():
        if token in vocab:
            raise CompatibilityError(
                f"the special token {token!r} is spelled like an ordinary token's byte-level "
                "string",
                key=token,
                hint="tokenizer.json holds both in one vocabulary; rename the special token",
            )
        if token_id in ordinary_ids:
            raise CompatibilityError(
                f"the special token {token!r} has id {token_id}, an ordinary token's id",
                key=token,
                hint="give special tokens ids after the ordinary vocabulary",
            )
        vocab[token] = token_id
    document: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token, token_id in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": to_onig(pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [[token_to_str(a), token_to_str(b)] for a, b in hf_merges(ranks)],
        },
    }
    atomic_write_text(path, json.dumps(document, ensure_ascii=False, indent=2) + "\n", what=_WHAT)


def read_hf_tokenizer_json(
    path: str | os.PathLike[str],
) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """Read a byte-level BPE ``tokenizer.json`` into ranks, a split pattern and specials.

    The split pattern comes from the pre-tokenizer: ``ByteLevel`` with ``use_regex: true``
    means GPT-2's pattern; a regex ``Split`` before ``ByteLevel(use_regex=false)`` gives its
    regex (translated from Oniguruma's dialect). Added tokens become the special tokens.
    The merge list must follow id order (tiktoken's rank semantics); every multi-byte token
    must be created by a merge. The post-processor (e.g. a template adding a
    beginning-of-text id) is not part of a lego tokenizer and is ignored.

    Args:
        path: The ``tokenizer.json`` file.

    Returns:
        ``(ranks, pattern, special_tokens)``: token bytes to ids 0..n-1, the split regex,
        and special-token strings to ids.

    Raises:
        ConfigError: When the file does not exist or cannot be read.
        FormatError: When it is not a well-formed ``tokenizer.json``.
        CompatibilityError: When it describes something other than a byte-level BPE
            (WordPiece, Unigram, a normalizer that changes text, byte fallback, ...) or one
            whose merge order disagrees with its ids; the message says what is supported.
    """
    document = read_json(path, what=_WHAT)
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise FormatError(
            f"the {_WHAT} has no 'model' object",
            path=path,
            key="model",
            hint="pass a tokenizers tokenizer.json (not tokenizer_config.json or vocab.json)",
        )
    model: dict[str, Any] = document["model"]
    _check_model(path, model)
    _check_normalizer(path, document.get("normalizer"))
    pattern = _pattern_from(path, document.get("pre_tokenizer"))
    _check_decoder(path, document.get("decoder"))
    added = document.get("added_tokens")
    specials = _added_tokens(path, [] if added is None else added, model["vocab"])
    ranks = _ranks(path, model["vocab"], specials)
    _check_merges(path, model["merges"], model["vocab"], ranks)
    return ranks, pattern, specials


def _incompatible(path: str | os.PathLike[str], message: str, key: str) -> CompatibilityError:
    return CompatibilityError(message, path=path, key=key, hint=_SUPPORTED)


def _check_model(path: str | os.PathLike[str], model: dict[str, Any]) -> None:
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise _incompatible(path, f"the model is {kind!r}, not a byte-level BPE", "model.type")
    if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        raise FormatError(
            "the BPE model needs a 'vocab' object and a 'merges' list",
            path=path,
            key="model",
            hint="the file is truncated or was edited by hand",
        )
    for option, allowed in (
        ("dropout", (None, 0, 0.0)),
        ("unk_token", (None,)),
        ("continuing_subword_prefix", (None, "")),
        ("end_of_word_suffix", (None, "")),
        ("byte_fallback", (None, False)),
    ):
        if model.get(option) not in allowed:
            raise _incompatible(
                path,
                f"the BPE model sets {option}={model[option]!r}, which a byte-level BPE "
                "does not use",
                f"model.{option}",
            )


def _check_normalizer(path: str | os.PathLike[str], normalizer: Any) -> None:
    if normalizer is None:
        return
    if (
        isinstance(normalizer, dict)
        and normalizer.get("type") == "Sequence"
        and not normalizer.get("normalizers")
    ):
        return
    kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
    raise _incompatible(
        path,
        f"the normalizer {kind!r} changes the text before it is split, which a byte-level "
        "BPE of lego-tokenize does not do",
        "normalizer",
    )


def _check_decoder(path: str | os.PathLike[str], decoder: Any) -> None:
    if decoder is None or (isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"):
        return
    kind = decoder.get("type") if isinstance(decoder, dict) else decoder
    raise _incompatible(
        path, f"the decoder {kind!r} is not ByteLevel: ids do not decode to bytes", "decoder"
    )


def _byte_level(path: str | os.PathLike[str], step: dict[str, Any], key: str) -> bool:
    """Check a ByteLevel pre-tokenizer step; return its use_regex."""
    if step.get("add_prefix_space"):
        raise _incompatible(
            path,
            "the ByteLevel pre-tokenizer adds a space before the text (add_prefix_space), "
            "which changes the text",
            f"{key}.add_prefix_space",
        )
    return bool(step.get("use_regex", True))


def _split_pattern(path: str | os.PathLike[str], step: dict[str, Any], key: str) -> str:
    spec = step.get("pattern")
    if not isinstance(spec, dict) or not isinstance(spec.get("Regex"), str):
        raise _incompatible(
            path, "the Split pre-tokenizer splits on a fixed string, not a regex", key
        )
    behavior = step.get("behavior")
    invert = bool(step.get("invert", False))
    if (behavior, invert) not in (("Isolated", False), ("Removed", True)):
        raise _incompatible(
            path,
            f"the Split pre-tokenizer uses behavior={behavior!r}, invert={invert}; only "
            "matches kept as words (Isolated) can be read",
            f"{key}.behavior",
        )
    pattern = from_onig(spec["Regex"])
    compile_pattern(pattern)
    return pattern


def _pattern_from(path: str | os.PathLike[str], pre: Any) -> str:
    key = "pre_tokenizer"
    if not isinstance(pre, dict):
        raise _incompatible(path, "the file has no pre-tokenizer to split text into words", key)
    steps: list[Any] = [pre]
    if pre.get("type") == "Sequence":
        steps = list(pre.get("pretokenizers") or [])
    kinds = [step.get("type") if isinstance(step, dict) else None for step in steps]
    if kinds == ["ByteLevel"]:
        if _byte_level(path, steps[0], key):
            return GPT2_PATTERN
        raise _incompatible(
            path,
            "the ByteLevel pre-tokenizer does not split the text (use_regex is false) and "
            "nothing else does",
            f"{key}.use_regex",
        )
    if kinds == ["Split", "ByteLevel"]:
        if _byte_level(path, steps[1], f"{key}.pretokenizers[1]"):
            raise _incompatible(
                path,
                "the text is split twice (a Split, then ByteLevel with use_regex)",
                f"{key}.pretokenizers[1].use_regex",
            )
        return _split_pattern(path, steps[0], f"{key}.pretokenizers[0]")
    raise _incompatible(
        path, f"the pre-tokenizer steps {kinds} are not ByteLevel with an optional Split", key
    )


def _added_tokens(
    path: str | os.PathLike[str], added: Any, vocab: dict[str, Any]
) -> dict[str, int]:
    if not isinstance(added, list):
        raise FormatError(
            "'added_tokens' is not a list", path=path, key="added_tokens", hint=_SUPPORTED
        )
    specials: dict[str, int] = {}
    for index, entry in enumerate(added):
        key = f"added_tokens[{index}]"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("content"), str)
            or not isinstance(entry.get("id"), int)
        ):
            raise FormatError(
                "an added token needs a string 'content' and an integer 'id'",
                path=path,
                key=key,
                hint="the file is corrupt or was edited by hand",
            )
        content: str = entry["content"]
        for flag in ("lstrip", "rstrip", "single_word"):
            if entry.get(flag):
                raise _incompatible(
                    path,
                    f"the added token {content!r} sets {flag}, which changes how it is "
                    "matched in text; lego-tokenize matches special tokens exactly",
                    f"{key}.{flag}",
                )
        in_vocab = vocab.get(content)
        if in_vocab is not None and in_vocab != entry["id"]:
            raise FormatError(
                f"the added token {content!r} has id {entry['id']} but the vocabulary "
                f"gives it {in_vocab}",
                path=path,
                key=key,
                hint="the file is inconsistent; write it again with tokenizers",
            )
        if content in specials:
            raise FormatError(
                f"the added token {content!r} is listed twice",
                path=path,
                key=key,
                hint="the file is inconsistent; write it again with tokenizers",
            )
        specials[content] = entry["id"]
    return dict(SpecialTokens(specials))


def _ranks(
    path: str | os.PathLike[str], vocab: dict[str, Any], specials: dict[str, int]
) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for text, token_id in vocab.items():
        if text in specials:
            continue
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise FormatError(
                f"the vocabulary gives {text!r} the id {token_id!r}",
                path=path,
                key=f"model.vocab[{text!r}]",
                hint="ids are non-negative integers; the file is corrupt",
            )
        try:
            ranks[str_to_token(text)] = token_id
        except FormatError:
            raise _incompatible(
                path,
                f"the vocabulary entry {text!r} is not a byte-level token (and not an added "
                "token), so this is not a byte-level BPE",
                f"model.vocab[{text!r}]",
            ) from None
    if not ranks:
        raise FormatError("the vocabulary is empty", path=path, key="model.vocab", hint=_SUPPORTED)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise _incompatible(
            path,
            f"the vocabulary lacks {len(missing)} of the 256 single-byte tokens (first: "
            f"{token_to_str(bytes([missing[0]]))!r} for byte 0x{missing[0]:02x}), so it is "
            "not a byte-level BPE",
            "model.vocab",
        )
    by_id: dict[int, bytes] = {}
    for token, token_id in ranks.items():
        if token_id in by_id or token_id in specials.values():
            raise FormatError(
                f"two vocabulary entries share the id {token_id}",
                path=path,
                key=f"model.vocab[{token_to_str(token)!r}]",
                hint="every token needs its own id; the file is corrupt",
            )
        by_id[token_id] = token
    if max(by_id) != len(by_id) - 1:
        gap = next(i for i in range(len(by_id)) if i not in by_id)
        raise _incompatible(
            path,
            f"the ordinary token ids are not 0..{len(by_id) - 1} (id {gap} is missing)",
            "model.vocab",
        )
    return ranks


def _check_merges(
    path: str | os.PathLike[str],
    merges: list[Any],
    vocab: dict[str, Any],
    ranks: dict[bytes, int],
) -> None:
    previous = -1
    created: set[int] = set()
    for index, merge in enumerate(merges):
        key = f"model.merges[{index}]"
        if isinstance(merge, str):
            parts = merge.split(" ")
        elif isinstance(merge, list) and all(isinstance(part, str) for part in merge):
            parts = list(merge)
        else:
            parts = []
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise FormatError(
                f"the merge {merge!r} is not a pair of tokens",
                path=path,
                key=key,
                hint="merges are 'left right' strings or [left, right] pairs",
            )
        left, right = parts
        merged = left + right
        for part in (left, right, merged):
            if part not in vocab:
                raise FormatError(
                    f"the merge {left!r} + {right!r} involves {part!r}, which is not in the "
                    "vocabulary",
                    path=path,
                    key=key,
                    hint="the file is inconsistent; write it again with tokenizers",
                )
        token_id = vocab[merged]
        if token_id < previous:
            raise _incompatible(
                path,
                f"the merge {left!r} + {right!r} creates id {token_id} after a merge that "
                f"created id {previous}: merge priority does not follow id order, which "
                "tiktoken's rank semantics need",
                key,
            )
        previous = token_id
        created.add(token_id)
    for token, token_id in ranks.items():
        if len(token) > 1 and token_id not in created:
            raise _incompatible(
                path,
                f"no merge creates the token {token_to_str(token)!r} (id {token_id})",
                "model.merges",
            )
