"""Interop with other tokenizer formats: GPT-2's files, tiktoken, HuggingFace ``tokenizer.json``.

Each reader returns plain data — mergeable ranks (token bytes -> id, tiktoken's model of a
byte-level BPE), a split pattern where the format has one, and special tokens — that
[`RegexBPETokenizer.from_ranks`][lego.tokenize.RegexBPETokenizer.from_ranks] and its
``from_gpt2_files`` / ``from_tiktoken`` / ``from_hf`` wrappers turn into a tokenizer; each
writer takes the same data. Every reader validates what it reads and names the file, the
line or key, and what to do when something is wrong.

- GPT-2's ``encoder.json`` + ``vocab.bpe``:
  [`read_gpt2_files`][lego.tokenize.interop.read_gpt2_files] and
  [`write_gpt2_files`][lego.tokenize.interop.write_gpt2_files];
- a tiktoken encoding name or a ``.tiktoken`` file:
  [`read_tiktoken`][lego.tokenize.interop.read_tiktoken] and
  [`write_tiktoken_file`][lego.tokenize.interop.write_tiktoken_file];
- HuggingFace's ``tokenizer.json``:
  [`read_hf_tokenizer_json`][lego.tokenize.interop.read_hf_tokenizer_json] and
  [`write_hf_tokenizer_json`][lego.tokenize.interop.write_hf_tokenizer_json].
"""

from lego.tokenize.interop.gpt2 import read_gpt2_files, write_gpt2_files
from lego.tokenize.interop.hf import read_hf_tokenizer_json, write_hf_tokenizer_json
from lego.tokenize.interop.merges import recover_merges
from lego.tokenize.interop.tiktoken_files import (
    read_tiktoken,
    read_tiktoken_file,
    tiktoken_names,
    write_tiktoken_file,
)

__all__ = [
    "read_gpt2_files",
    "write_gpt2_files",
    "read_tiktoken",
    "read_tiktoken_file",
    "write_tiktoken_file",
    "tiktoken_names",
    "read_hf_tokenizer_json",
    "write_hf_tokenizer_json",
    "recover_merges",
]
