"""HuggingFace model directories: the supported families, reading and writing.

- [`lego.arch.hf.families`][lego.arch.hf.families]: the supported transformers
  architectures and how a config is matched to one;
- [`lego.arch.hf.directory`][lego.arch.hf.directory]: what a directory holds, checked before
  any weight is read (``config.json`` as a ``DecoderConfig``, shards, pickle refused);
- [`lego.arch.hf.reading`][lego.arch.hf.reading]: its tensors under lego's state-dict keys
  (lazily, through the ``safetensors`` library), and loading them into a model in place;
- [`lego.arch.hf.writing`][lego.arch.hf.writing]: ``to_hf``, a model as a directory that
  transformers loads.

This package works on any module whose ``config`` is a ``DecoderConfig`` and never imports
the model class, so [`DecoderLM`][lego.arch.decoder.DecoderLM]'s ``save_pretrained`` and
``load_weights`` call it directly. Building a new model from a directory is
[`lego.arch.from_hf()`][lego.arch.loading.from_hf], one level up. Each family's config
translation and weight table live beside its model ([`lego.arch.gpt2.hf`][lego.arch.gpt2.hf],
[`lego.arch.llama.hf`][lego.arch.llama.hf], [`lego.arch.qwen3.hf`][lego.arch.qwen3.hf]),
written with the toolkit of [`lego.arch.convert`][lego.arch.convert].
"""

from lego.arch.hf.directory import (
    CONFIG_NAME,
    INDEX_NAME,
    SAFETENSORS_NAME,
    HFDirectory,
    open_hf_directory,
    read_hf_config,
)
from lego.arch.hf.families import (
    HF_ARCHITECTURES,
    HFArchitecture,
    architecture_for_config,
    architecture_for_hf,
)
from lego.arch.hf.reading import load_hf_weights, parse_device, parse_load_dtype, read_hf_state
from lego.arch.hf.writing import parse_shard_size, to_hf

__all__ = [
    "CONFIG_NAME",
    "HF_ARCHITECTURES",
    "INDEX_NAME",
    "SAFETENSORS_NAME",
    "HFArchitecture",
    "HFDirectory",
    "architecture_for_config",
    "architecture_for_hf",
    "load_hf_weights",
    "open_hf_directory",
    "parse_device",
    "parse_load_dtype",
    "parse_shard_size",
    "read_hf_config",
    "read_hf_state",
    "to_hf",
]
