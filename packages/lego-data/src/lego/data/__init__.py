"""LegoLLM's data pipeline: from raw text to training batches.

- Corpora: the embedded ``python-stdlib`` corpus (no network), local files and folders,
  downloadable corpora by name or URL, or documents you hold (a list of strings)
  ([`get_corpus()`][lego.data.corpora.get_corpus]).
- [`download()`][lego.data.download.download]: streamed, resumable, sha256-verified.
- [`prepare()`][lego.data.prepare.prepare]: tokenize in worker processes into raw
  ``train.bin`` / ``val.bin`` token files plus a validated ``meta.json``
  ([`lego.data.meta`][lego.data.meta]); tokenizers are named with lego-tokenize's one
  spec ([`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]).
- [`summarize()`][lego.data.summary.summarize]: corpus statistics, with a tokenizer too.
- [`TokenDataset`][lego.data.dataset.TokenDataset] and
  [`TokenLoader`][lego.data.loader.TokenLoader]: memory-mapped windows, batched in a
  background thread, seeded, sharded across ranks, resumable mid-epoch.
- Instruction data: chat templates ([`ChatMLTemplate`][lego.protocols.chat.ChatMLTemplate],
  [`Llama3Template`][lego.protocols.chat.Llama3Template]), Alpaca prompts, masked labels
  ([`InstructionDataset`][lego.data.instruction.InstructionDataset]), preference pairs
  ([`PreferenceDataset`][lego.data.preference.PreferenceDataset]), dynamic padding
  ([`PaddingCollator`][lego.data.collate.PaddingCollator]), packing
  ([`pack_examples()`][lego.data.packing.pack_examples]) and
  [`ExampleLoader`][lego.data.example_loader.ExampleLoader].
- Generated tasks with verifiable answers (arithmetic, sorting, reversing), split by
  problem so that held-out problems never reach training
  ([`task_rows()`][lego.data.tasks.task_rows]).
- ``python-stdlib-qa``: instruction rows and preference pairs generated from the standard
  library's docstrings and from small snippets, split by module / operation
  ([`qa_rows()`][lego.data.stdlib_qa.qa_rows],
  [`preference_rows()`][lego.data.stdlib_qa.preference_rows]).

Every name is imported on first use (PEP 562), so ``import lego.data`` and the
``lego-data`` command stay light: the token loaders pull in torch only when they are asked
for, and ``lego-data download`` or ``summary`` never load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lego.data.__about__ import __version__

if TYPE_CHECKING:
    from lego.data.alpaca import format_alpaca_prompt
    from lego.data.collate import PaddingCollator
    from lego.data.corpora import (
        Corpus,
        FileCorpus,
        IterableCorpus,
        PythonStdlibCorpus,
        RemoteCorpus,
        corpus_names,
        get_corpus,
    )
    from lego.data.dataset import TokenDataset
    from lego.data.encode import TokenizedExample, encode_alpaca, encode_chat, encode_segments
    from lego.data.example_loader import ExampleLoader
    from lego.data.instruction import InstructionDataset
    from lego.data.loader import TokenLoader
    from lego.data.meta import (
        SourceInfo,
        SplitFile,
        SplitInfo,
        TokenizerInfo,
        TokenMeta,
        dtype_for_vocab,
        open_split,
        read_meta,
        write_meta,
    )
    from lego.data.packing import (
        PackedBatch,
        PackedCollator,
        PackedSequence,
        document_attention_mask,
        pack_examples,
    )
    from lego.data.preference import (
        PreferenceBatch,
        PreferenceCollator,
        PreferenceDataset,
        PreferenceExample,
    )
    from lego.data.stdlib_qa import (
        PREFERENCE_CORRUPTIONS,
        QA_DATASET,
        QA_KINDS,
        preference_rows,
        qa_rows,
        qa_split,
    )
    from lego.data.summary import Summary, plot, summarize
    from lego.data.tasks import TASK_NAMES, task_problems, task_rows, task_split
    from lego.protocols.chat import (
        ChatMLTemplate,
        ChatTemplate,
        Llama3Template,
        Message,
        Segment,
        get_chat_template,
    )

__all__ = [
    "__version__",
    # corpora, download, prepare, summary
    "Corpus",
    "FileCorpus",
    "IterableCorpus",
    "PythonStdlibCorpus",
    "RemoteCorpus",
    "get_corpus",
    "corpus_names",
    "Summary",
    "summarize",
    "plot",
    # token files and meta.json
    "TokenMeta",
    "TokenizerInfo",
    "SourceInfo",
    "SplitInfo",
    "SplitFile",
    "dtype_for_vocab",
    "read_meta",
    "write_meta",
    "open_split",
    # windows and loaders
    "TokenDataset",
    "TokenLoader",
    "ExampleLoader",
    # instruction and preference data
    "Message",
    "Segment",
    "ChatTemplate",
    "ChatMLTemplate",
    "Llama3Template",
    "get_chat_template",
    "format_alpaca_prompt",
    "TokenizedExample",
    "encode_segments",
    "encode_chat",
    "encode_alpaca",
    "InstructionDataset",
    "PreferenceDataset",
    "PreferenceExample",
    "PreferenceBatch",
    "PreferenceCollator",
    "PaddingCollator",
    "PackedSequence",
    "PackedBatch",
    "PackedCollator",
    "pack_examples",
    "document_attention_mask",
    # generated tasks with verifiable answers
    "TASK_NAMES",
    "task_rows",
    "task_split",
    "task_problems",
    # python-stdlib-qa: instruction and preference data
    "QA_DATASET",
    "QA_KINDS",
    "PREFERENCE_CORRUPTIONS",
    "qa_split",
    "qa_rows",
    "preference_rows",
]

_LAZY: dict[str, str] = {
    "Corpus": "lego.data.corpora",
    "FileCorpus": "lego.data.corpora",
    "IterableCorpus": "lego.data.corpora",
    "PythonStdlibCorpus": "lego.data.corpora",
    "RemoteCorpus": "lego.data.corpora",
    "get_corpus": "lego.data.corpora",
    "corpus_names": "lego.data.corpora",
    "Summary": "lego.data.summary",
    "summarize": "lego.data.summary",
    "plot": "lego.data.summary",
    "TokenMeta": "lego.data.meta",
    "TokenizerInfo": "lego.data.meta",
    "SourceInfo": "lego.data.meta",
    "SplitInfo": "lego.data.meta",
    "SplitFile": "lego.data.meta",
    "dtype_for_vocab": "lego.data.meta",
    "read_meta": "lego.data.meta",
    "write_meta": "lego.data.meta",
    "open_split": "lego.data.meta",
    "TokenDataset": "lego.data.dataset",
    "TokenLoader": "lego.data.loader",
    "ExampleLoader": "lego.data.example_loader",
    "Message": "lego.protocols.chat",
    "Segment": "lego.protocols.chat",
    "ChatTemplate": "lego.protocols.chat",
    "ChatMLTemplate": "lego.protocols.chat",
    "Llama3Template": "lego.protocols.chat",
    "get_chat_template": "lego.protocols.chat",
    "format_alpaca_prompt": "lego.data.alpaca",
    "TokenizedExample": "lego.data.encode",
    "encode_segments": "lego.data.encode",
    "encode_chat": "lego.data.encode",
    "encode_alpaca": "lego.data.encode",
    "InstructionDataset": "lego.data.instruction",
    "PreferenceDataset": "lego.data.preference",
    "PreferenceExample": "lego.data.preference",
    "PreferenceBatch": "lego.data.preference",
    "PreferenceCollator": "lego.data.preference",
    "PaddingCollator": "lego.data.collate",
    "PackedSequence": "lego.data.packing",
    "PackedBatch": "lego.data.packing",
    "PackedCollator": "lego.data.packing",
    "pack_examples": "lego.data.packing",
    "document_attention_mask": "lego.data.packing",
    "TASK_NAMES": "lego.data.tasks",
    "task_rows": "lego.data.tasks",
    "task_split": "lego.data.tasks",
    "task_problems": "lego.data.tasks",
    "QA_DATASET": "lego.data.stdlib_qa",
    "QA_KINDS": "lego.data.stdlib_qa",
    "PREFERENCE_CORRUPTIONS": "lego.data.stdlib_qa",
    "qa_split": "lego.data.stdlib_qa",
    "qa_rows": "lego.data.stdlib_qa",
    "preference_rows": "lego.data.stdlib_qa",
}
"""Public name to the module that defines it (imported on first access)."""


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and cache the name."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes, lazy names included."""
    return sorted({*globals(), *__all__})
