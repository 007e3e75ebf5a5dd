"""LegoLLM's tokenizers: characters, words and byte-level BPE, trained fast, tiktoken-compatible.

- [`CharTokenizer`][lego.tokenize.CharTokenizer] and
  [`WordTokenizer`][lego.tokenize.WordTokenizer] (with a
  [`Vocabulary`][lego.tokenize.Vocabulary]): the teaching tokenizers.
- [`NaiveBPETokenizer`][lego.tokenize.NaiveBPETokenizer]: byte-level BPE over raw text.
- [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer]: GPT-2 / GPT-4 / LLaMA 3 style
  byte-level BPE with a split pattern, encoded by tiktoken's engine.
- [`load`][lego.tokenize.load] reads any of them back from the file ``save`` writes.
- [`resolve_tokenizer`][lego.tokenize.resolve_tokenizer]: THE way a tokenizer is named by a
  string (``tok.json``, ``tiktoken:gpt2``, ``hf:tokenizer.json``, ``gpt2:folder``) in every
  brick and command line; [`tokenizer_fingerprint`][lego.tokenize.tokenizer_fingerprint]:
  a tokenizer's identity (a SHA-256 over its vocabulary).

Every tokenizer satisfies [`lego.protocols.TrainableTokenizer`][lego.protocols.TrainableTokenizer].
This package never imports torch.
"""

from lego.tokenize.__about__ import __version__
from lego.tokenize.base import BaseTokenizer, VocabSizeNotReachedWarning
from lego.tokenize.bpe_base import ByteLevelBPETokenizer
from lego.tokenize.char import CharTokenizer
from lego.tokenize.fingerprint import tokenizer_fingerprint
from lego.tokenize.interop.resolve import TokenizerSpec, parse_tokenizer_spec, resolve_tokenizer
from lego.tokenize.loading import load
from lego.tokenize.naive_bpe import NaiveBPETokenizer
from lego.tokenize.patterns import PATTERNS, resolve_pattern
from lego.tokenize.regex_bpe import RegexBPETokenizer
from lego.tokenize.specials import DisallowedSpecialError
from lego.tokenize.vocabulary import Vocabulary
from lego.tokenize.word import WordTokenizer

__all__ = [
    "__version__",
    # tokenizers
    "CharTokenizer",
    "WordTokenizer",
    "Vocabulary",
    "NaiveBPETokenizer",
    "RegexBPETokenizer",
    "BaseTokenizer",
    "ByteLevelBPETokenizer",
    # files, names and identity
    "load",
    "resolve_tokenizer",
    "parse_tokenizer_spec",
    "TokenizerSpec",
    "tokenizer_fingerprint",
    # patterns and special tokens
    "PATTERNS",
    "resolve_pattern",
    "DisallowedSpecialError",
    "VocabSizeNotReachedWarning",
]
