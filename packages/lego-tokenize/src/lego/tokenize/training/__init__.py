"""The training engine: streamed sources, parallel pre-token counting, the merge loop."""

from lego.tokenize.training.counting import count_pretokens, resolve_workers
from lego.tokenize.training.merge_loop import MergeResult, learn_merges
from lego.tokenize.training.sources import DEFAULT_CHUNK_SIZE, iter_chunks, iter_documents

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MergeResult",
    "count_pretokens",
    "iter_chunks",
    "iter_documents",
    "learn_merges",
    "resolve_workers",
]
