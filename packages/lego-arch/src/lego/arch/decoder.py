"""[`DecoderLM`][lego.arch.decoder.DecoderLM]: the one model shell every family uses.

GPT-2, Llama 3 and Qwen 3 are the same program with different bricks::

    ids -> token_embedding (+ position_embedding) -> dropout
        -> blocks[0] -> ... -> blocks[n_layers - 1]      (pre-norm transformer blocks)
        -> final_norm -> lm_head -> logits

Everything that differs (LayerNorm or RMSNorm, learned positions or RoPE inside the
attention, MLP or SwiGLU or a mixture of experts, fused or separate q/k/v, QK-norm, biases,
tied head) lives in the sub-modules, which
[`DecoderLM.from_config()`][lego.arch.decoder.DecoderLM.from_config] builds from a
[`DecoderConfig`][lego.arch.config.DecoderConfig] through
[`lego.arch.components`][lego.arch.components]. The constructor takes the sub-modules
themselves, so a hand-assembled model needs no config registry at all.

The model satisfies [`CausalLM`][lego.protocols.CausalLM],
[`CachedCausalLM`][lego.protocols.CachedCausalLM] and
[`PretrainedModel`][lego.protocols.PretrainedModel] and
[`HFNamedModel`][lego.protocols.HFNamedModel]: ``model(ids)`` returns logits
``(B, T, vocab_size)``; ``model.new_kv_cache(B, S)`` allocates a
[`StaticKVCache`][lego.layers.StaticKVCache] for incremental decoding;
``model.save_pretrained(dir)`` writes a HuggingFace model directory and
``model.load_weights(dir)`` reads one back in place;
``model.hf_parameter_name(name)`` gives a parameter's name in that directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.arch.components import Positions, build_block, build_norm, build_positions
from lego.arch.config import DecoderConfig
from lego.arch.convert.mapping import transpose
from lego.arch.hf import architecture_for_config, load_hf_weights, to_hf
from lego.layers import (
    CausalSelfAttention,
    MoEFeedForward,
    StaticKVCache,
    TokenEmbedding,
    TransformerBlock,
    init_normal_,
    scale_residual_projections_,
)
from lego.protocols import CompatibilityError, ConfigError, DataError, check_probability

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from lego.protocols import KVCache

__all__ = ["DecoderLM", "DecoderOutput", "document_positions"]


def document_positions(document_ids: Tensor) -> Tensor:
    """Positions restarting at 0 at every document of packed rows.

    A document starts wherever the id differs from the previous token's (and at the first
    token of a row); a padding run (``-1``) counts as one more document, as lego-data's
    packing numbers it.

    Args:
        document_ids: ``(B, T)`` integer document numbers, each document one contiguous run.

    Returns:
        Long tensor ``(B, T)``: each token's offset from the start of its run.

    Example:
        >>> document_positions(torch.tensor([[0, 0, 0, 1, 1, -1, -1]]))
        tensor([[0, 1, 2, 0, 1, 0, 1]])
    """
    b, t = document_ids.shape
    index = torch.arange(t, device=document_ids.device).expand(b, t)  # (B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]  # (B, T - 1)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # (B, T)
    return index - first  # (B, T)


class DecoderOutput(NamedTuple):
    """What ``DecoderLM(..., output_hidden_states=True)`` returns.

    Attributes:
        logits: ``(B, T, vocab_size)``.
        hidden_states: ``n_layers + 1`` tensors ``(B, T, d_model)``: the embeddings (with
            positions, after embedding dropout), then the output of each block, the last
            one after ``final_norm`` (transformers' convention, so the last entry is what
            ``lm_head`` reads).
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...]


class DecoderLM(nn.Module):
    """A decoder-only language model assembled from its parts.

    Args:
        config: The configuration the parts were built from (returned by ``config``,
            written by ``to_hf``, used by ``new_kv_cache``).
        token_embedding: ``(B, T)`` ids to ``(B, T, d_model)`` vectors (an
            ``nn.Embedding``, e.g. [`TokenEmbedding`][lego.layers.TokenEmbedding]).
        position_embedding: A module adding position vectors,
            ``(B, T, d_model) -> (B, T, d_model)`` with a ``position_ids`` keyword (GPT-2),
            or None when positions live in the attention (RoPE) or nowhere.
        blocks: The transformer blocks, in order.
        final_norm: The norm before the output head.
        lm_head: ``nn.Linear(d_model, vocab_size, bias=False)``.
        tie_embeddings: Make ``lm_head.weight`` the same parameter as
            ``token_embedding.weight`` (one tensor, updated once).
        dropout: Dropout on the embeddings (GPT-2's ``embd_pdrop``), in ``[0, 1)``.
        activation_checkpointing: Recompute each block in the backward pass (see the
            ``activation_checkpointing`` property).

    Raises:
        ConfigError: Mismatched sizes between the parts and the config, or
            ``tie_embeddings`` disagreeing with ``config.tie_embeddings``.
    """

    def __init__(
        self,
        *,
        config: DecoderConfig,
        token_embedding: nn.Embedding,
        position_embedding: nn.Module | None,
        blocks: Sequence[TransformerBlock],
        final_norm: nn.Module,
        lm_head: nn.Linear,
        tie_embeddings: bool,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(blocks) != config.n_layers:
            raise ConfigError(
                f"DecoderLM: {len(blocks)} blocks given but config.n_layers={config.n_layers}",
                key="n_layers",
            )
        expected = (config.vocab_size, config.d_model)
        if tuple(token_embedding.weight.shape) != expected:
            raise ConfigError(
                f"DecoderLM: token_embedding has shape {tuple(token_embedding.weight.shape)}, "
                f"the config says (vocab_size, d_model) = {expected}",
                key="vocab_size",
            )
        if tuple(lm_head.weight.shape) != expected:
            raise ConfigError(
                f"DecoderLM: lm_head has shape {tuple(lm_head.weight.shape)}, the config says "
                f"(vocab_size, d_model) = {expected}",
                key="vocab_size",
            )
        if bool(tie_embeddings) != config.tie_embeddings:
            raise ConfigError(
                f"DecoderLM: tie_embeddings={tie_embeddings} but config.tie_embeddings="
                f"{config.tie_embeddings}",
                key="tie_embeddings",
                hint="the config is what to_hf writes: make them agree",
            )
        self._config = config
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.embedding_dropout = check_probability("dropout", dropout, owner="DecoderLM")
        self.tie_weights()
        self.activation_checkpointing = activation_checkpointing

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: DecoderConfig, *, positions: Positions | None = None, initialize: bool = True
    ) -> DecoderLM:
        """Build and initialize a model from its config.

        The parts come from the registries of [`lego.arch.components`][lego.arch.components].
        Every matrix is drawn from ``N(0, initializer_range)``, biases are zero, norm
        scales one; with ``scale_residual_init`` the residual projections are re-drawn
        from ``N(0, initializer_range / sqrt(2 * n_layers))`` (GPT-2). Parameters are
        created on the current default device and dtype, so
        ``with torch.device("meta"): DecoderLM.from_config(config)`` allocates nothing.

        Args:
            config: The model configuration.
            positions: The position modules to use; None builds them from
                ``config.positions``. A loader passes ones built on the target device (their
                tables are computed, not loaded) while it builds the rest on the meta device.
            initialize: Draw the initial values (above). False leaves the values the
                modules' constructors gave, for a loader that replaces every parameter.

        Returns:
            The initialized model, in training mode.
        """
        if positions is None:
            positions = build_positions(config)
        model = cls(
            config=config,
            token_embedding=TokenEmbedding(vocab_size=config.vocab_size, d_model=config.d_model),
            position_embedding=positions.embedding,
            blocks=[build_block(config, positions.rotary) for _ in range(config.n_layers)],
            final_norm=build_norm(config, config.d_model),
            lm_head=nn.Linear(config.d_model, config.vocab_size, bias=False),
            tie_embeddings=config.tie_embeddings,
            dropout=config.dropout,
        )
        if initialize:
            model.reset_parameters()
        return model

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialize every parameter as ``from_config`` does (see there).

        Norm scales (``attention_norm``, ``ffn_norm``, ``final_norm``, ``q_norm``,
        ``k_norm``) are set back to one.
        """
        std = self._config.initializer_range
        init_normal_(self, std=std)
        if self._config.scale_residual_init:
            scale_residual_projections_(self, n_layers=self._config.n_layers, std=std)
        for name, param in self.named_parameters():
            if param.ndim == 1 and _is_norm_scale(name):
                param.fill_(1.0)

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the token embedding's parameter, when the config ties them.

        The constructor calls it; call it again after replacing either parameter (e.g.
        ``load_state_dict(..., assign=True)`` installs one new parameter per key). Without
        ``config.tie_embeddings`` it does nothing.
        """
        if self._config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    # -- properties ---------------------------------------------------------------------

    @property
    def config(self) -> DecoderConfig:
        """The model's configuration."""
        return self._config

    @property
    def tied(self) -> bool:
        """Whether ``lm_head.weight`` is the token embedding's weight."""
        return self.lm_head.weight is self.token_embedding.weight

    @property
    def activation_checkpointing(self) -> bool:
        """Recompute each block's activations in the backward pass instead of storing them.

        Trades about one extra forward for activation memory of one block input per
        layer. Applies in training mode with gradients and no KV cache; outputs and
        gradients are the same as without it.
        """
        return all(block.activation_checkpointing for block in self._blocks())

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        for block in self._blocks():
            block.activation_checkpointing = bool(enabled)

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the MoE load-balancing losses of the last forward (0-d; 0 without MoE).

        Each term is already weighted by ``router_aux_loss_coef``; add it to the language
        modeling loss when training a mixture of experts.
        """
        total = torch.zeros((), device=self.token_embedding.weight.device, dtype=torch.float32)
        for module in self.modules():
            if isinstance(module, MoEFeedForward) and module.aux_loss is not None:
                total = total + module.aux_loss
        return total

    def _blocks(self) -> list[TransformerBlock]:
        return [block for block in self.blocks if isinstance(block, TransformerBlock)]

    # -- the forward pass ---------------------------------------------------------------

    @overload
    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        document_ids: Tensor | None = None,
        output_hidden_states: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        document_ids: Tensor | None = None,
        output_hidden_states: Literal[True],
    ) -> DecoderOutput: ...

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        document_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Tensor | DecoderOutput:
        """Compute next-token logits for every position.

        Args:
            input_ids: Token ids, shape ``(B, T)``, dtype long.
            attention_mask: 1 for real tokens, 0 for padding, shape ``(B, S)`` with ``S``
                the cached length plus ``T``; None means no padding. The mask does not
                move positions: with left padding pass ``position_ids`` too.
            position_ids: Positions of the ``T`` tokens, ``(B, T)`` or ``(T,)``; None means
                ``kv_cache.seq_len + arange(T)`` (``arange(T)`` without a cache), as in
                transformers.
            kv_cache: A cache from ``new_kv_cache``; the new keys and values are appended
                to it.
            document_ids: For packed rows, the document of each token, ``(B, T)``
                integers (``0, 1, ...`` per row, ``-1`` on padding; each document one
                contiguous run): every token attends only to the tokens of its own document
                before it, so a packed row gives the logits of its documents run one by
                one. With ``position_ids`` None the positions restart at 0 at every
                document (and at the padding run). None means one sequence per row. With
                a ``kv_cache`` only when it is empty (a packed prefill: the cache row then
                holds every document, for ``copy_rows`` to move each to a row of its own).
            output_hidden_states: Also return the hidden states.

        Returns:
            Logits ``(B, T, vocab_size)`` in the parameters' dtype, or with
            ``output_hidden_states=True`` a [`DecoderOutput`][lego.arch.decoder.DecoderOutput].

        Raises:
            DataError: ``input_ids`` is not a ``(B, T)`` integer tensor, or a mask / position
                / document shape is wrong.
            ConfigError: ``document_ids`` given with a ``kv_cache`` that is not empty.
            CompatibilityError: The cache does not match the model (layers, heads, batch).
        """
        self._check_inputs(input_ids, kv_cache, document_ids)
        past = kv_cache.seq_len if kv_cache is not None else 0
        if position_ids is None and past > 0:
            t = int(input_ids.shape[1])
            position_ids = torch.arange(past, past + t, device=input_ids.device)  # (T,)
        if position_ids is None and document_ids is not None:
            position_ids = document_positions(document_ids)  # (B, T)

        x = self.token_embedding(input_ids)  # (B, T, d_model)
        if self.position_embedding is not None:
            x = self.position_embedding(x, position_ids=position_ids)  # (B, T, d_model)
        if self.embedding_dropout and self.training:
            x = F.dropout(x, p=self.embedding_dropout, training=True)  # (B, T, d_model)

        hidden: list[Tensor] = [x] if output_hidden_states else []
        for i, block in enumerate(self.blocks):
            layer_cache = kv_cache[i] if kv_cache is not None else None
            x = block(
                x,
                position_ids=position_ids,
                attention_mask=attention_mask,
                kv_cache=layer_cache,
                document_ids=document_ids,
            )  # (B, T, d_model)
            if output_hidden_states:
                hidden.append(x)

        x = self.final_norm(x)  # (B, T, d_model)
        logits: Tensor = self.lm_head(x)  # (B, T, vocab_size)
        if not output_hidden_states:
            return logits
        hidden[-1] = x  # the last hidden state is the normalized one (transformers)
        return DecoderOutput(logits=logits, hidden_states=tuple(hidden))

    @torch.no_grad()
    def attention_weights(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """The attention probabilities of every layer, for visualization.

        Runs one forward pass; each block's attention is re-run on the same input through
        its explicit ``"math"`` path (``forward_with_weights``), whatever backend the
        model uses, so the maps are exactly the softmax the math path computes.

        Args:
            input_ids: Token ids, shape ``(B, T)``.
            attention_mask: As in ``forward``.
            position_ids: As in ``forward``.
            document_ids: As in ``forward``.

        Returns:
            One tensor per layer, each ``(B, n_heads, T, T)``: row ``t`` is how query ``t``
            spreads its attention over the keys (sums to 1; 0 on future and padded keys and
            on other documents).

        Raises:
            CompatibilityError: A block's attention has no ``forward_with_weights``.
        """
        maps: list[Tensor] = []

        def record(
            module: nn.Module, args: tuple[object, ...], kwargs: dict[str, Any], _out: object
        ) -> None:
            assert isinstance(module, CausalSelfAttention)
            (x,) = args  # the attention's input, (B, T, d_model)
            assert isinstance(x, Tensor)
            _, weights = module.forward_with_weights(
                x,
                position_ids=kwargs.get("position_ids"),
                attention_mask=kwargs.get("attention_mask"),
                document_ids=kwargs.get("document_ids"),
            )  # (B, n_heads, T, T)
            maps.append(weights)

        found = [getattr(block, "attention", None) for block in self.blocks]
        missing = [i for i, a in enumerate(found) if not isinstance(a, CausalSelfAttention)]
        if missing:
            raise CompatibilityError(
                f"DecoderLM.attention_weights: the attention of blocks {missing} is not a "
                "lego.layers.CausalSelfAttention, whose math path gives the weights",
                hint="build the blocks with lego.layers.CausalSelfAttention",
            )
        attentions = [a for a in found if isinstance(a, CausalSelfAttention)]
        handles = [a.register_forward_hook(record, with_kwargs=True) for a in attentions]
        try:
            self(
                input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                document_ids=document_ids,
            )
        finally:
            for handle in handles:
                handle.remove()
        return tuple(maps)

    def _check_inputs(
        self, input_ids: Tensor, kv_cache: KVCache | None, document_ids: Tensor | None
    ) -> None:
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.is_complex():
            raise DataError(
                f"DecoderLM: input_ids must be a (B, T) integer tensor, got shape "
                f"{tuple(input_ids.shape)} dtype {input_ids.dtype}",
                tensor="input_ids",
                hint="add a batch dimension with ids.unsqueeze(0)",
            )
        if document_ids is not None:
            if kv_cache is not None and kv_cache.seq_len:
                raise ConfigError(
                    f"DecoderLM: document_ids cannot be combined with a kv_cache that holds "
                    f"{kv_cache.seq_len} positions (a packed prefill fills an empty cache; "
                    "cached decoding keeps one sequence per row)",
                    key="document_ids",
                    hint="decode each document in its own row, or prefill packed rows into an "
                    "empty cache",
                )
            if (
                document_ids.shape != input_ids.shape
                or document_ids.dtype.is_floating_point
                or document_ids.is_complex()
            ):
                raise DataError(
                    f"DecoderLM: document_ids must be a {tuple(input_ids.shape)} integer "
                    f"tensor like input_ids, got shape {tuple(document_ids.shape)} dtype "
                    f"{document_ids.dtype}",
                    tensor="document_ids",
                    hint="give one document number per token (0, 1, ... per row, -1 on padding)",
                )
        if kv_cache is not None and len(kv_cache) != len(self.blocks):
            raise CompatibilityError(
                f"DecoderLM: the KV cache has {len(kv_cache)} layers, the model {len(self.blocks)}",
                hint="allocate the cache with model.new_kv_cache(...)",
            )

    # -- model directories --------------------------------------------------------------

    def save_pretrained(
        self, path: str | os.PathLike[str], /, *, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write a HuggingFace model directory (``config.json`` + safetensors).

        Same as [`lego.arch.to_hf(self, path)`][lego.arch.hf.writing.to_hf] with default shards
        and the parameters' dtype.

        Args:
            path: The directory (created with its parents when missing).
            state_dict: Tensors to write instead of the model's own, under its
                ``state_dict()`` keys (e.g. a consolidated FSDP state on rank 0).

        Returns:
            The directory.

        Raises:
            CompatibilityError: The config has no HF architecture, or ``state_dict`` does
                not fit the model (every difference listed).
        """
        return to_hf(self, path, state_dict=state_dict)

    def load_weights(self, path: str | os.PathLike[str], /) -> None:
        """Load the weights of a model directory into this model, in place.

        See [`lego.arch.hf.load_hf_weights()`][lego.arch.hf.reading.load_hf_weights]: the
        parameters are copied into in place (an optimizer built on them stays valid), cast
        to their dtype and device.

        Args:
            path: A directory written by ``save_pretrained`` / ``to_hf`` or transformers.

        Raises:
            CompatibilityError: The directory holds a model of another configuration or
                other tensors (every difference listed).
        """
        load_hf_weights(self, path)

    def hf_parameter_name(self, name: str, /) -> tuple[str, bool]:
        """The name transformers gives one of this model's parameters, from the weight table.

        Adapters in PEFT's layout are keyed by these names (lego-peft reads them here).

        Args:
            name: A ``state_dict()`` key of this model (``"blocks.0.attention.q_proj.weight"``).

        Returns:
            ``(hf_name, transposed)``: e.g. ``("model.layers.0.self_attn.q_proj.weight",
            False)``; for GPT-2's projections, stored as ``Conv1D`` ``(in, out)``,
            ``("transformer.h.0.attn.c_attn.weight", True)``.

        Raises:
            CompatibilityError: The family has no HF architecture, the name is no tensor of
                the family's layout, or it is the stack of several HF tensors (MoE experts).

        Example:
            >>> import lego.arch
            >>> lego.arch.build("gpt2-tiny").hf_parameter_name("blocks.1.attention.qkv_proj.weight")
            ('transformer.h.1.attn.c_attn.weight', True)
        """
        config = self._config
        table = architecture_for_config(config).weights
        (plan,) = table.plan([name], n_layers=config.n_layers, n_experts=config.n_experts or 0)
        if plan.stacked:
            raise CompatibilityError(
                f"DecoderLM: {name!r} is the stack of {len(plan.hf)} HuggingFace tensors "
                f"({plan.hf[0]}, ...), not one",
                tensor=name,
                hint="name one expert's tensor in the HF checkpoint instead",
            )
        return plan.hf[0], plan.to_hf is transpose

    # -- incremental decoding -----------------------------------------------------------

    def new_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StaticKVCache:
        """Allocate an empty cache for ``batch_size`` rows of up to ``max_seq_len`` positions.

        Args:
            batch_size: Number of sequences decoded together.
            max_seq_len: Prompt length plus new tokens, at most ``config.context_length``.
            dtype: Cache dtype; None means the parameters' dtype.
            device: Cache device; None means the parameters' device.

        Returns:
            A [`StaticKVCache`][lego.layers.StaticKVCache] with one layer per block, each
            ``(batch_size, n_kv_heads, max_seq_len, head_dim)`` keys and values.

        Raises:
            ConfigError: ``max_seq_len`` beyond ``config.context_length`` or sizes below 1.
        """
        config = self._config
        if max_seq_len > config.context_length:
            raise ConfigError(
                f"DecoderLM: max_seq_len={max_seq_len} exceeds the context length "
                f"{config.context_length}",
                key="max_seq_len",
                hint="shorten the prompt or the number of new tokens",
            )
        weight = self.token_embedding.weight
        return StaticKVCache(
            n_layers=config.n_layers,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            n_kv_heads=config.kv_heads,
            head_dim=config.head_size,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
        )


_NORM_NAMES = ("attention_norm", "ffn_norm", "final_norm", "q_norm", "k_norm")


def _is_norm_scale(name: str) -> bool:
    """Whether a parameter is a norm's scale (``...final_norm.weight`` etc.)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in _NORM_NAMES
