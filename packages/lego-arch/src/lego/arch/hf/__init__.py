"""HuggingFace interop: model directories in and out.

[`from_hf()`][lego.arch.hf.io.from_hf] reads a transformers model directory,
[`to_hf()`][lego.arch.hf.io.to_hf] writes one.

- [`lego.arch.hf.io`][lego.arch.hf.io]: reading and writing directories (lazy safetensors,
  shards, pickle refused);
- [`lego.arch.hf.mapping`][lego.arch.hf.mapping]: the rule engine between HF tensor names
  and lego state-dict keys;
- [`lego.arch.hf.mapped`][lego.arch.hf.mapped]: zero-copy tensors of a safetensors file
  (views on a copy-on-write memory map);
- [`lego.arch.hf.families`][lego.arch.hf.families]: the supported transformers
  architectures and how a config is matched to one;
- [`lego.arch.hf.fields`][lego.arch.hf.fields]: typed reads of ``config.json`` fields.

Each family's config translation and weight table live beside its model:
[`lego.arch.gpt2.hf`][lego.arch.gpt2.hf], [`lego.arch.llama.hf`][lego.arch.llama.hf],
[`lego.arch.qwen3.hf`][lego.arch.qwen3.hf].
"""

from lego.arch.hf.families import (
    HF_ARCHITECTURES,
    HFArchitecture,
    architecture_for_config,
    architecture_for_hf,
)
from lego.arch.hf.io import from_hf, load_hf_weights, parse_shard_size, read_hf_config, to_hf
from lego.arch.hf.mapping import TensorPlan, WeightRule, WeightTable

__all__ = [
    "HF_ARCHITECTURES",
    "HFArchitecture",
    "TensorPlan",
    "WeightRule",
    "WeightTable",
    "architecture_for_config",
    "architecture_for_hf",
    "from_hf",
    "load_hf_weights",
    "parse_shard_size",
    "read_hf_config",
    "to_hf",
]
