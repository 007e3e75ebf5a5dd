"""[`LoraConfig`][lego.peft.config.LoraConfig]: every LoRA setting, with PEFT's names.

Where PEFT and lego-peft mean the same thing, the field has PEFT's name and PEFT's
meaning, so a ``LoraConfig`` reads like the ``peft.LoraConfig`` it replaces::

    >>> config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    >>> config.scaling_for(r=16, lora_alpha=32)
    2.0
    >>> LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", use_rslora=True).scaling_for(
    ...     r=16, lora_alpha=32
    ... )
    8.0

Module names in ``target_modules``, ``modules_to_save``, ``rank_pattern`` and
``alpha_pattern`` are the model's own (``blocks.0.attention.q_proj``), or transformers'
(``model.layers.0.self_attn.q_proj``) when [`apply_lora()`][lego.peft.model.apply_lora] is
called with ``hf_names=True`` (what [`load_adapter()`][lego.peft.peft_format.load_adapter]
does with a PEFT adapter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lego.protocols import Config, ConfigError, check_float, check_int, check_probability

__all__ = ["LoraConfig", "InitLoraWeights", "LoraBias"]

LoraBias = Literal["none", "all", "lora_only"]
"""Which biases of the base model train with the adapter (PEFT's ``bias``)."""

InitLoraWeights = bool | Literal["gaussian"]
"""How new adapter weights start (PEFT's ``init_lora_weights``)."""


@dataclass(frozen=True, kw_only=True)
class LoraConfig(Config):
    r"""The settings of a LoRA (or DoRA) adapter.

    Args:
        target_modules: Which modules get an adapter: a list of names, each matching a
            module whose name is that name or ends with ``"." + name`` (PEFT's rule); a
            regular expression string, matched against the whole module name; or
            ``"all-linear"``, every linear layer but the output head. Each name must
            match at least one module.
        r: The rank of the update ``B @ A`` (``A`` is ``(r, in)``, ``B`` is ``(out, r)``).
        lora_alpha: The update is scaled by ``lora_alpha / r`` (``lora_alpha / sqrt(r)``
            with ``use_rslora``).
        lora_dropout: Dropout on the adapter's input (linear layers), in ``[0, 1)``.
        bias: ``"none"``: the base biases stay frozen; ``"all"``: every bias of the model
            trains (and is saved with the adapter); ``"lora_only"``: the biases of the
            adapted layers train.
        use_rslora: Rank-stabilized LoRA: scale by ``lora_alpha / sqrt(r)``.
        use_dora: DoRA: a learned magnitude per output feature times the direction of
            ``W + scale * B @ A``, whose norm is treated as a constant in the backward pass
            (as in the DoRA paper and PEFT).
        modules_to_save: Modules trained in full: each is replaced by a trainable copy
            (the original stays for [`disabled()`][lego.peft.model.LoraModel.disabled])
            and saved with the adapter. A module matches when its name ends with the
            given name (PEFT's rule). Such modules get no LoRA.
        rank_pattern: Module-name patterns to ranks, overriding ``r``; a pattern matches a
            module whose name ends with it as a regular expression (PEFT's
            ``(.*\.)?(pattern)$``); the first matching pattern wins.
        alpha_pattern: The same for ``lora_alpha``.
        init_lora_weights: ``True``: PEFT's default (``A`` Kaiming-uniform, ``B`` zero, so
            the adapted model starts equal to the base; for embeddings ``A`` zero and
            ``B`` normal); ``"gaussian"``: ``A`` normal with std ``1 / r``, ``B`` zero;
            ``False``: both random (PEFT's test mode: the adapter changes the output from
            the start).

    Raises:
        ConfigError: A field of the wrong type, ``r`` or a pattern's rank below 1, a
            dropout outside ``[0, 1)``, an alpha that is not a positive finite number, an
            empty or invalid target list or pattern.
    """

    target_modules: tuple[str, ...] | str
    r: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    bias: LoraBias = "none"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: tuple[str, ...] | None = None
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    init_lora_weights: InitLoraWeights = True

    def validate(self) -> None:
        """Check the ranges and the patterns (see the class docstring)."""
        super().validate()
        owner = "LoraConfig"
        check_int("r", self.r, minimum=1, owner=owner, hint="use a rank of at least 1, e.g. 8")
        check_float("lora_alpha", self.lora_alpha, low=0.0, low_open=True, owner=owner)
        check_probability("lora_dropout", self.lora_dropout, include_one=False, owner=owner)
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                raise ConfigError(
                    "LoraConfig: target_modules is an empty pattern",
                    key="target_modules",
                    hint='name modules (["q_proj", "v_proj"]), a regex, or "all-linear"',
                )
            if targets.lower() != "all-linear":
                _check_regex("target_modules", targets)
        elif not targets or not all(targets):
            raise ConfigError(
                f"LoraConfig: target_modules must name at least one module, got {list(targets)}",
                key="target_modules",
                hint='name modules (["q_proj", "v_proj"]), a regex, or "all-linear"',
            )
        if self.modules_to_save is not None and not all(self.modules_to_save):
            raise ConfigError(
                "LoraConfig: modules_to_save holds an empty name",
                key="modules_to_save",
                hint="name each module to train in full, e.g. ['lm_head']",
            )
        for pattern, rank in self.rank_pattern.items():
            _check_regex(f"rank_pattern.{pattern}", pattern)
            check_int(f"rank_pattern.{pattern}", rank, minimum=1, owner=owner)
        for pattern, alpha in self.alpha_pattern.items():
            _check_regex(f"alpha_pattern.{pattern}", pattern)
            check_float(f"alpha_pattern.{pattern}", alpha, low=0.0, low_open=True, owner=owner)

    def scaling_for(self, *, r: int, lora_alpha: float) -> float:
        """The factor the update ``B @ A`` is multiplied by, for one layer.

        Args:
            r: The layer's rank (``r`` or its ``rank_pattern`` value).
            lora_alpha: The layer's alpha (``lora_alpha`` or its ``alpha_pattern`` value).

        Returns:
            ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``.
        """
        return lora_alpha / math.sqrt(r) if self.use_rslora else lora_alpha / r

    def rank_and_alpha(self, name: str) -> tuple[int, float]:
        """The rank and alpha of the layer called ``name`` (patterns applied as PEFT does).

        Args:
            name: The module's name, in the naming the patterns use.

        Returns:
            ``(r, lora_alpha)``.
        """
        r = self.r
        for pattern, rank in self.rank_pattern.items():
            if pattern_matches(pattern, name):
                r = rank
                break
        alpha = self.lora_alpha
        for pattern, value in self.alpha_pattern.items():
            if pattern_matches(pattern, name):
                alpha = float(value)
                break
        return r, alpha


def pattern_matches(pattern: str, name: str) -> bool:
    r"""PEFT's rule for ``rank_pattern`` / ``alpha_pattern`` keys: ``(.*\.)?(pattern)$``.

    Args:
        pattern: A regular expression for the end of a module name.
        name: A module name.

    Returns:
        Whether the pattern matches the whole name or a dot-separated tail of it.

    Example:
        >>> pattern_matches("q_proj", "model.layers.0.self_attn.q_proj")
        True
        >>> pattern_matches("proj", "model.layers.0.self_attn.q_proj")
        False
    """
    return re.match(rf"(.*\.)?({pattern})$", name) is not None


def _check_regex(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(
            f"LoraConfig: {key} is not a valid regular expression ({err})",
            key=key,
            hint="escape special characters with a backslash, or list plain module names",
        ) from None
