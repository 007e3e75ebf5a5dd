"""LegoLLM's contracts: the seams every brick composes through.

``lego.protocols`` has no dependencies and never imports torch at run time (tensor types
appear only under ``TYPE_CHECKING``). It holds:

- ``typing.Protocol`` contracts, one per seam: :class:`Tokenizer`,
  :class:`TrainableTokenizer`, :class:`CausalLM`, :class:`CachedCausalLM`,
  :class:`Attention`, :class:`Norm`, :class:`FeedForward`, :class:`PositionalEncoding`,
  :class:`KVCache`, :class:`LayerKVCache`, :class:`LogitsProcessor`, :class:`BatchSource`,
  :class:`Checkpointable`, :class:`TrainerCallback`, :class:`Adapter`;
- the error hierarchy: :class:`LegoError` and its kinds;
- shared value types: :class:`Config` / :class:`ModelConfig` (validated configs as data),
  :class:`SpecialTokens`, :class:`LMBatch` and :data:`IGNORE_INDEX`;
- the command-line conventions (:func:`run_cli`, :func:`make_parser`) and conformance
  suites (:mod:`lego.protocols.testing`).
"""

from lego.protocols.__about__ import __version__
from lego.protocols.adapter import Adapter
from lego.protocols.cli import make_parser, run_cli
from lego.protocols.config import Config, ModelConfig
from lego.protocols.errors import (
    CompatibilityError,
    ConfigError,
    DataError,
    FormatError,
    LegoError,
    TrainingError,
    closest,
    did_you_mean,
)
from lego.protocols.generation import LogitsProcessor
from lego.protocols.kv_cache import KVCache, LayerKVCache
from lego.protocols.layers import Attention, FeedForward, Norm, PositionalEncoding
from lego.protocols.model import CachedCausalLM, CausalLM, ModelConfigLike
from lego.protocols.special_tokens import ENDOFTEXT, SpecialTokens
from lego.protocols.tokenizer import Tokenizer, TrainableTokenizer, TrainingData
from lego.protocols.training import (
    IGNORE_INDEX,
    BatchSource,
    Checkpointable,
    LMBatch,
    TrainerCallback,
    TrainerState,
)

__all__ = [
    "__version__",
    # contracts
    "Tokenizer",
    "TrainableTokenizer",
    "TrainingData",
    "CausalLM",
    "CachedCausalLM",
    "ModelConfigLike",
    "Attention",
    "Norm",
    "FeedForward",
    "PositionalEncoding",
    "KVCache",
    "LayerKVCache",
    "LogitsProcessor",
    "BatchSource",
    "Checkpointable",
    "TrainerState",
    "TrainerCallback",
    "Adapter",
    # errors
    "LegoError",
    "ConfigError",
    "FormatError",
    "CompatibilityError",
    "DataError",
    "TrainingError",
    "closest",
    "did_you_mean",
    # value types
    "Config",
    "ModelConfig",
    "SpecialTokens",
    "ENDOFTEXT",
    "LMBatch",
    "IGNORE_INDEX",
    # command line
    "make_parser",
    "run_cli",
]
