"""LegoLLM's model files: GPT-2, Llama 3 and Qwen 3 (dense and MoE) from lego-layers bricks.

One model shell, [`DecoderLM`][lego.arch.DecoderLM], and one configuration,
[`DecoderConfig`][lego.arch.DecoderConfig], serve every family; the families are data
(named presets in ``lego.arch.gpt2``, ``lego.arch.llama``, ``lego.arch.qwen3``), the
components are named by string and resolved through
[`lego.arch.components`][lego.arch.components]:

    >>> import lego.arch
    >>> model = lego.arch.build("llama-tiny")
    >>> sorted(lego.arch.presets())[:3]
    ['gpt2', 'gpt2-large', 'gpt2-medium']

Each family is also written out as one self-contained file, for reading:
``lego.arch.reference.gpt2``, ``.llama3`` and ``.qwen3`` (plain PyTorch, shape comments,
``load_hf(folder)`` for HF checkpoints; the docs page "Reference models"). They are not
used by the rest of LegoLLM; ``DecoderLM`` is.

[`estimate_size()`][lego.arch.estimate_size] counts parameters by part and the memory of
weights, gradients, optimizer state and activations; ``lego-arch info <preset>`` prints it.
[`estimate_lora_size()`][lego.arch.estimate_lora_size] does the same for LoRA and QLoRA
(NF4) fine-tuning: a frozen base, adapters with their gradients and AdamW state.
"""

from lego.arch.__about__ import __version__
from lego.arch.components import (
    FFNS,
    NORMS,
    POSITIONS,
    Component,
    Positions,
    register_ffn,
    register_norm,
    register_positions,
)
from lego.arch.config import DTYPES, DecoderConfig, parse_dtype
from lego.arch.decoder import DecoderLM, DecoderOutput, document_positions
from lego.arch.hf import read_hf_config, to_hf
from lego.arch.loading import from_hf
from lego.arch.lora_size import LORA_BASES, LoraSizeEstimate, estimate_lora_size
from lego.arch.registry import (
    build,
    get_preset,
    list_presets,
    presets,
    register_preset,
    resolve_config,
)
from lego.arch.size import (
    MemoryEstimate,
    ParameterCounts,
    SizeEstimate,
    count_parameters_by_part,
    estimate_size,
    size_tables,
)

__all__ = [
    "__version__",
    # configuration
    "DecoderConfig",
    "DTYPES",
    "parse_dtype",
    # the model
    "DecoderLM",
    "DecoderOutput",
    "document_positions",
    # HuggingFace model directories in and out
    "from_hf",
    "to_hf",
    "read_hf_config",
    # presets and building
    "build",
    "presets",
    "list_presets",
    "get_preset",
    "register_preset",
    "resolve_config",
    # size estimation
    "estimate_size",
    "count_parameters_by_part",
    "size_tables",
    "SizeEstimate",
    "ParameterCounts",
    "MemoryEstimate",
    "estimate_lora_size",
    "LoraSizeEstimate",
    "LORA_BASES",
    # component registries
    "NORMS",
    "FFNS",
    "POSITIONS",
    "Component",
    "Positions",
    "register_norm",
    "register_ffn",
    "register_positions",
]
