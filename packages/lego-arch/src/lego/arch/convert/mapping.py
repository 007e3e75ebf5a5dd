"""A small, explicit rule engine between HuggingFace tensor names and lego state-dict keys.

Each family describes its checkpoint layout as an ordered table of
[`WeightRule`][lego.arch.convert.mapping.WeightRule]s::

    WeightRule("transformer.h.{i}.attn.c_attn.weight", "blocks.{i}.attention.qkv_proj.weight",
               to_lego=transpose, to_hf=transpose)
    WeightRule("model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
               "blocks.{i}.feed_forward.experts.gate_proj")

``{i}`` stands for the layer index and appears on both sides. ``{e}`` stands for the expert
index and appears only on the HuggingFace side: the ``E`` per-expert HF tensors are stacked
(after ``to_lego``, each) into lego's one ``(E, ...)`` tensor, and split back (then
``to_hf``, each) when writing.

[`WeightTable.plan()`][lego.arch.convert.mapping.WeightTable.plan] expands a table for one model
(its layer and expert counts and its actual state-dict keys) into concrete
[`TensorPlan`][lego.arch.convert.mapping.TensorPlan]s, one per lego tensor: which HF names it is
made of and how. Rules whose lego name the model does not have (a bias the config turned
off, a learned position table of a RoPE model) are skipped, so one table serves every
configuration of a family.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from lego.protocols import CompatibilityError

__all__ = [
    "Transform",
    "identity",
    "transpose",
    "WeightRule",
    "TensorPlan",
    "WeightTable",
]

Transform = Callable[[torch.Tensor], torch.Tensor]
"""A function from one tensor to another (applied to one HF tensor, or one expert's)."""


def identity(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` unchanged (the default transform).

    Args:
        tensor: Any tensor.

    Returns:
        The same tensor object.
    """
    return tensor


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """Swap the two dimensions of a matrix (GPT-2's ``Conv1D`` ``(in, out)`` <-> ``Linear``).

    Args:
        tensor: A 2-D tensor, shape ``(a, b)``.

    Returns:
        A view of shape ``(b, a)`` (contiguous copies are made only where needed).
    """
    return tensor.t()


_FIELD = re.compile(r"\{([a-z]+)\}")


@dataclass(frozen=True)
class WeightRule:
    """One line of a family's weight table.

    Args:
        hf: The HuggingFace name pattern, with ``{i}`` for the layer and ``{e}`` for the
            expert (e.g. ``"model.layers.{i}.self_attn.q_proj.weight"``).
        lego: The lego state-dict key pattern, with ``{i}`` and never ``{e}``.
        to_lego: Applied to each HF tensor (each expert's, before stacking) on reading.
        to_hf: Applied to each lego tensor (each expert's, after splitting) on writing.

    Raises:
        ValueError: A pattern uses a field other than ``{i}``/``{e}``, ``{e}`` appears on the
            lego side, or ``{i}`` appears on one side only (a bug in the table).
    """

    hf: str
    lego: str
    to_lego: Transform = identity
    to_hf: Transform = identity

    def __post_init__(self) -> None:
        hf_fields = set(_FIELD.findall(self.hf))
        lego_fields = set(_FIELD.findall(self.lego))
        if not hf_fields <= {"i", "e"} or not lego_fields <= {"i"}:
            raise ValueError(f"weight rule {self.hf!r} -> {self.lego!r}: unknown placeholders")
        if ("i" in hf_fields) != ("i" in lego_fields):
            raise ValueError(f"weight rule {self.hf!r} -> {self.lego!r}: '{{i}}' on one side")

    @property
    def per_layer(self) -> bool:
        """Whether the rule has one tensor per layer (``{i}``)."""
        return "{i}" in self.lego

    @property
    def stacks_experts(self) -> bool:
        """Whether the rule stacks per-expert HF tensors (``{e}``) into one lego tensor."""
        return "{e}" in self.hf


@dataclass(frozen=True)
class TensorPlan:
    """How one lego tensor is made from (and written back as) HuggingFace tensors.

    Attributes:
        lego: The lego state-dict key (e.g. ``"blocks.0.attention.q_proj.weight"``).
        hf: The HF names it is made of: one name, or one per expert when ``stacked``.
        stacked: Whether the lego tensor is the ``(E, ...)`` stack of the ``hf`` tensors.
        to_lego: Applied to each HF tensor on reading.
        to_hf: Applied to each lego tensor (or expert slice) on writing.
    """

    lego: str
    hf: tuple[str, ...]
    stacked: bool = False
    to_lego: Transform = field(default=identity, compare=False)
    to_hf: Transform = field(default=identity, compare=False)

    @property
    def is_view(self) -> bool:
        """Whether the lego tensor can be a view of the HF tensor (identity or transpose)."""
        return not self.stacked and self.to_lego in (identity, transpose)

    def build(self, tensors: Sequence[torch.Tensor], *, contiguous: bool = True) -> torch.Tensor:
        """Assemble the lego tensor from the HF tensors (in the order of ``hf``).

        Args:
            tensors: One tensor per name in ``hf``.
            contiguous: Return a contiguous tensor. With False, a plan that
                [`is_view`][lego.arch.convert.mapping.TensorPlan.is_view] returns a view of the
                HF tensor: the tensor itself, or GPT-2's ``Conv1D`` weight transposed
                (strides swapped, no data moved).

        Returns:
            The lego tensor; for a stacked plan, shape ``(E, *expert_shape)``. Data is
            copied only where needed: with the identity transform (or ``contiguous=False``
            and a transpose) the result shares the HF tensor's memory, so a memory-mapped
            checkpoint stays shared; a stack, or a contiguous transpose, makes a new tensor.
        """
        if self.stacked:
            return torch.stack([self.to_lego(t) for t in tensors])
        built = self.to_lego(tensors[0])
        return built.contiguous() if contiguous else built

    def split(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn the lego tensor into its HF tensors (contiguous, ready for safetensors).

        Args:
            tensor: The lego tensor (``(E, ...)`` for a stacked plan).

        Returns:
            HF name -> tensor, in the order of ``hf``.
        """
        if self.stacked:
            return {name: self.to_hf(tensor[e]).contiguous() for e, name in enumerate(self.hf)}
        return {self.hf[0]: self.to_hf(tensor).contiguous()}

    def expected_shape(self, hf_shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The lego shape the HF shapes produce, computed on the meta device (no data).

        Args:
            hf_shapes: The shape of each tensor in ``hf``.

        Returns:
            The shape [`build()`][lego.arch.convert.mapping.TensorPlan.build] would return.
        """
        metas = [torch.empty(tuple(shape), device="meta") for shape in hf_shapes]
        return tuple(self.build(metas).shape)


@dataclass(frozen=True)
class WeightTable:
    """A family's ordered weight rules, plus the HF names that are safe to ignore.

    Args:
        rules: The rules; the first rule whose lego pattern matches a key wins.
        ignore: Regular expressions (``re.fullmatch``) of HF names that carry no weights
            lego needs (e.g. GPT-2's old ``attn.masked_bias`` buffers, RoPE ``inv_freq``).
        base_prefix: The prefix of the base model's names (``"transformer."``,
            ``"model."``). Checkpoints of the bare base model (e.g. the Hub's original
            ``gpt2``) store names without it; reading accepts both spellings.
    """

    rules: tuple[WeightRule, ...]
    ignore: tuple[str, ...] = ()
    base_prefix: str = ""

    def plan(
        self, lego_keys: Iterable[str], *, n_layers: int, n_experts: int = 0
    ) -> list[TensorPlan]:
        """Expand the table for one model.

        Args:
            lego_keys: The model's state-dict keys, each tensor once (tied aliases left out).
            n_layers: The number of blocks (values of ``{i}``).
            n_experts: The number of experts (values of ``{e}``); 0 without MoE.

        Returns:
            One plan per lego key, in the order of ``lego_keys``.

        Raises:
            CompatibilityError: Some lego keys have no rule (listing them all): this model
                has parts the family's HF layout cannot express.
        """
        candidates: dict[str, TensorPlan] = {}
        for rule in self.rules:
            layers = range(n_layers) if rule.per_layer else [None]
            for layer in layers:
                lego = rule.lego if layer is None else rule.lego.replace("{i}", str(layer))
                if lego in candidates:
                    continue
                hf = rule.hf if layer is None else rule.hf.replace("{i}", str(layer))
                if rule.stacks_experts:
                    names = tuple(hf.replace("{e}", str(e)) for e in range(n_experts))
                else:
                    names = (hf,)
                candidates[lego] = TensorPlan(
                    lego=lego,
                    hf=names,
                    stacked=rule.stacks_experts,
                    to_lego=rule.to_lego,
                    to_hf=rule.to_hf,
                )
        plans: list[TensorPlan] = []
        unmapped: list[str] = []
        for key in lego_keys:
            if key in candidates:
                plans.append(candidates[key])
            else:
                unmapped.append(key)
        if unmapped:
            raise CompatibilityError(
                f"{len(unmapped)} model tensor(s) have no HuggingFace name in this family's "
                f"weight table: {', '.join(unmapped)}",
                tensor=unmapped[0],
                hint="this configuration uses parts the HuggingFace architecture does not "
                "have; use a configuration of the family as published",
            )
        return plans

    def ignored(self, hf_name: str) -> bool:
        """Whether an HF name is one the table says to skip.

        Args:
            hf_name: A tensor name from a checkpoint.

        Returns:
            True when it matches one of ``ignore``.
        """
        return any(re.fullmatch(pattern, hf_name) for pattern in self.ignore)

    def resolve(self, hf_name: str, available: set[str] | frozenset[str]) -> str | None:
        """Find the spelling of ``hf_name`` a checkpoint uses (with or without the prefix).

        Args:
            hf_name: The full HF name from a plan.
            available: The names the checkpoint holds.

        Returns:
            ``hf_name`` or its unprefixed form, whichever is in ``available``; None if
            neither.
        """
        if hf_name in available:
            return hf_name
        if self.base_prefix and hf_name.startswith(self.base_prefix):
            bare = hf_name[len(self.base_prefix) :]
            if bare in available:
                return bare
        return None
