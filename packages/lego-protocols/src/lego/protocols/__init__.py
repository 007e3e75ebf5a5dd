"""LegoLLM's contracts: the seams every brick composes through.

``lego.protocols`` has no dependencies and never imports torch at run time (tensor types
appear only under ``TYPE_CHECKING``). It holds:

- ``typing.Protocol`` contracts, one per seam: [`Tokenizer`][lego.protocols.Tokenizer],
  [`TrainableTokenizer`][lego.protocols.TrainableTokenizer], [`CausalLM`][lego.protocols.CausalLM],
  [`CachedCausalLM`][lego.protocols.CachedCausalLM],
  [`PretrainedModel`][lego.protocols.PretrainedModel],
  [`HFNamedModel`][lego.protocols.HFNamedModel], [`Attention`][lego.protocols.Attention],
  [`Norm`][lego.protocols.Norm], [`FeedForward`][lego.protocols.FeedForward],
  [`PositionalEncoding`][lego.protocols.PositionalEncoding], [`KVCache`][lego.protocols.KVCache],
  [`LayerKVCache`][lego.protocols.LayerKVCache],
  [`LogitsProcessor`][lego.protocols.LogitsProcessor], [`BatchSource`][lego.protocols.BatchSource],
  [`Checkpointable`][lego.protocols.Checkpointable],
  [`TrainerCallback`][lego.protocols.TrainerCallback], [`Adapter`][lego.protocols.Adapter];
- the error hierarchy: [`LegoError`][lego.protocols.LegoError] and its kinds;
- shared value types: [`Config`][lego.protocols.Config] /
  [`ModelConfig`][lego.protocols.ModelConfig] (validated configs as data),
  [`SpecialTokens`][lego.protocols.SpecialTokens], [`LMBatch`][lego.protocols.LMBatch] and
  [`IGNORE_INDEX`][lego.protocols.IGNORE_INDEX];
- scalar checks with one message style ([`lego.protocols.checks`][lego.protocols.checks]:
  [`check_int()`][lego.protocols.check_int], [`check_float()`][lego.protocols.check_float],
  [`check_probability()`][lego.protocols.check_probability], ...);
- file helpers with one error rule for the whole project
  ([`lego.protocols.files`][lego.protocols.files]: [`read_bytes()`][lego.protocols.read_bytes],
  [`read_text()`][lego.protocols.read_text], [`read_json()`][lego.protocols.read_json],
  [`atomic_write_bytes()`][lego.protocols.atomic_write_bytes],
  [`atomic_write_text()`][lego.protocols.atomic_write_text], ...);
- one progress mechanism ([`lego.protocols.progress`][lego.protocols.progress]:
  [`make_progress()`][lego.protocols.make_progress], a rich bar on a terminal, plain lines
  otherwise) and one config-file reader
  ([`lego.protocols.configfile`][lego.protocols.configfile]:
  [`load_config()`][lego.protocols.load_config], YAML plus ``a.b=value`` overrides converted
  by each field's annotation);
- chat templates ([`lego.protocols.chat`][lego.protocols.chat]) and the on-disk layout of runs,
  checkpoints and model directories ([`lego.protocols.layout`][lego.protocols.layout]), which
  several bricks read and write;
- native kernels in C ([`lego.protocols.native`][lego.protocols.native]:
  [`load_native()`][lego.protocols.load_native] compiles a brick's
  [`NativeSpec`][lego.protocols.NativeSpec] once per machine into a verified cache,
  [`kernel_cache_dir()`][lego.protocols.kernel_cache_dir], and loads it with ``ctypes``);
- [`import_optional()`][lego.protocols.import_optional], the one way optional bricks and
  libraries are imported (a missing one is a `ConfigError` with the ``pip install``);
- the command-line conventions ([`run_cli()`][lego.protocols.run_cli],
  [`make_parser()`][lego.protocols.make_parser]) and conformance suites
  ([`lego.protocols.testing`][lego.protocols.testing]).
"""

from lego.protocols.__about__ import __version__
from lego.protocols.adapter import Adapter
from lego.protocols.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_probability,
)
from lego.protocols.cli import Interrupted, Terminated, make_parser, run_cli
from lego.protocols.config import Config, ModelConfig, check_envelope
from lego.protocols.configfile import load_config, read_config_file
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
from lego.protocols.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_path,
    decode_utf8,
    open_binary,
    parse_json,
    read_bytes,
    read_json,
    read_text,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)
from lego.protocols.generation import LogitsProcessor
from lego.protocols.hf_names import HFNamedModel
from lego.protocols.kv_cache import KVCache, LayerKVCache
from lego.protocols.layers import Attention, FeedForward, Norm, PositionalEncoding
from lego.protocols.locks import FolderLock
from lego.protocols.model import (
    CachedCausalLM,
    CausalLM,
    ModelConfigLike,
    PretrainedModel,
    accepts_document_ids,
)
from lego.protocols.native import (
    NativeLibrary,
    NativeSpec,
    cpu_flags,
    kernel_cache_dir,
    load_native,
)
from lego.protocols.optional import import_optional
from lego.protocols.progress import Progress, Task, make_progress
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
    "PretrainedModel",
    "accepts_document_ids",
    "HFNamedModel",
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
    "check_envelope",
    "load_config",
    "read_config_file",
    "SpecialTokens",
    "ENDOFTEXT",
    "LMBatch",
    "IGNORE_INDEX",
    # scalar checks
    "check_int",
    "check_float",
    "check_probability",
    "check_bool",
    "check_choice",
    # files
    "read_bytes",
    "read_text",
    "read_json",
    "decode_utf8",
    "open_binary",
    "parse_json",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "temporary_name",
    "remove_stale_temporaries",
    "write_errors",
    "FolderLock",
    # native kernels
    "NativeSpec",
    "NativeLibrary",
    "load_native",
    "kernel_cache_dir",
    "cpu_flags",
    # optional dependencies
    "import_optional",
    # progress
    "Progress",
    "Task",
    "make_progress",
    # command line
    "make_parser",
    "run_cli",
    "Interrupted",
    "Terminated",
]
