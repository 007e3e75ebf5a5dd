"""Which HuggingFace architectures lego-arch reads and writes, and how to tell them apart.

Each [`HFArchitecture`][lego.arch.hf.families.HFArchitecture] ties a transformers class
(``LlamaForCausalLM``) and ``model_type`` (``"llama"``) to its family's config translation
and weight table. A ``config.json`` is matched by its ``architectures`` list first, then
by ``model_type``; a lego config by its ``family`` (and, for Qwen 3, by ``ffn="moe"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lego.arch.config import DecoderConfig
from lego.arch.convert.mapping import WeightTable
from lego.arch.gpt2 import hf as gpt2_hf
from lego.arch.llama import hf as llama_hf
from lego.arch.qwen3 import hf as qwen3_hf
from lego.protocols import CompatibilityError

__all__ = ["HF_ARCHITECTURES", "HFArchitecture", "architecture_for_config", "architecture_for_hf"]


@dataclass(frozen=True)
class HFArchitecture:
    """One transformers causal-LM class lego-arch converts to and from.

    Attributes:
        name: The transformers class (``"GPT2LMHeadModel"``).
        model_type: transformers' ``model_type`` (``"gpt2"``).
        family: The lego family (``"gpt2"``, ``"llama"``, ``"qwen3"``).
        moe: Whether it is the mixture-of-experts variant of its family.
        config_from_hf: ``config.json`` mapping -> ``DecoderConfig``.
        config_to_hf: ``DecoderConfig`` -> ``config.json`` mapping.
        weights: The weight table.
    """

    name: str
    model_type: str
    family: str
    moe: bool
    config_from_hf: Callable[[Mapping[str, Any]], DecoderConfig]
    config_to_hf: Callable[[DecoderConfig], dict[str, Any]]
    weights: WeightTable


HF_ARCHITECTURES: tuple[HFArchitecture, ...] = (
    HFArchitecture(
        name=gpt2_hf.ARCHITECTURE,
        model_type=gpt2_hf.MODEL_TYPE,
        family="gpt2",
        moe=False,
        config_from_hf=gpt2_hf.config_from_hf,
        config_to_hf=gpt2_hf.config_to_hf,
        weights=gpt2_hf.WEIGHTS,
    ),
    HFArchitecture(
        name=llama_hf.ARCHITECTURE,
        model_type=llama_hf.MODEL_TYPE,
        family="llama",
        moe=False,
        config_from_hf=llama_hf.config_from_hf,
        config_to_hf=llama_hf.config_to_hf,
        weights=llama_hf.WEIGHTS,
    ),
    HFArchitecture(
        name=qwen3_hf.ARCHITECTURE,
        model_type=qwen3_hf.MODEL_TYPE,
        family="qwen3",
        moe=False,
        config_from_hf=qwen3_hf.config_from_hf,
        config_to_hf=qwen3_hf.config_to_hf,
        weights=qwen3_hf.WEIGHTS,
    ),
    HFArchitecture(
        name=qwen3_hf.MOE_ARCHITECTURE,
        model_type=qwen3_hf.MOE_MODEL_TYPE,
        family="qwen3",
        moe=True,
        config_from_hf=qwen3_hf.config_from_hf,
        config_to_hf=qwen3_hf.config_to_hf,
        weights=qwen3_hf.MOE_WEIGHTS,
    ),
)
"""Every supported architecture."""


def _supported() -> str:
    return ", ".join(f"{a.name} (model_type {a.model_type!r})" for a in HF_ARCHITECTURES)


def architecture_for_hf(
    data: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None
) -> HFArchitecture:
    """Find the architecture a ``config.json`` describes.

    Args:
        data: The parsed ``config.json``.
        path: The file, for messages.

    Returns:
        The matching architecture.

    Raises:
        CompatibilityError: The config names another architecture (the message names it
            and lists the supported ones) or names none.
    """
    names = data.get("architectures")
    model_type = data.get("model_type")
    if isinstance(names, list):
        for arch in HF_ARCHITECTURES:
            if arch.name in names:
                return arch
    if names is None:
        for arch in HF_ARCHITECTURES:
            if arch.model_type == model_type:
                return arch
    found = ", ".join(map(str, names)) if isinstance(names, list) else repr(names)
    raise CompatibilityError(
        f"config.json describes an architecture lego-arch does not support: "
        f"architectures={found}, model_type={model_type!r}",
        path=path,
        key="architectures" if names is not None else "model_type",
        hint=f"lego-arch reads {_supported()}",
    )


def architecture_for_config(config: DecoderConfig) -> HFArchitecture:
    """Find the architecture a lego config is saved as.

    Args:
        config: The model's config; its ``family`` decides.

    Returns:
        The matching architecture.

    Raises:
        CompatibilityError: The family is ``"custom"`` or has no HF counterpart.
    """
    for arch in HF_ARCHITECTURES:
        if arch.family == config.family and arch.moe == config.is_moe:
            return arch
    raise CompatibilityError(
        f"a model of family {config.family!r}"
        + (" with a mixture of experts" if config.is_moe else "")
        + " has no HuggingFace architecture",
        key="family",
        hint=f"set family to one of gpt2, llama, qwen3 when the model matches it; lego-arch "
        f"writes {_supported()}",
    )
