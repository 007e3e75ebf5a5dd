"""LegoLLM's transformer bricks, each swappable through one ``lego.protocols`` contract.

One concept per module, keyword-only constructors that take sub-modules (torchtune's
``modules/`` style), and a shape comment on every line of every ``forward``:

- positions: [`TokenEmbedding`][lego.layers.TokenEmbedding],
  [`LearnedPositionalEmbedding`][lego.layers.LearnedPositionalEmbedding],
  [`SinusoidalPositionalEmbedding`][lego.layers.SinusoidalPositionalEmbedding] and
  [`RotaryEmbedding`][lego.layers.RotaryEmbedding] with its scaling variants;
- norms: [`LayerNorm`][lego.layers.LayerNorm], [`RMSNorm`][lego.layers.RMSNorm],
  [`QKNorm`][lego.layers.QKNorm];
- feed-forwards: [`MLP`][lego.layers.MLP], [`GatedMLP`][lego.layers.GatedMLP] and the
  mixture of experts [`MoEFeedForward`][lego.layers.MoEFeedForward];
- attention: [`CausalSelfAttention`][lego.layers.CausalSelfAttention] (MHA / GQA / MQA,
  SDPA or math backend) and its masks
  ([`build_attention_mask()`][lego.layers.build_attention_mask]);
- the static KV cache: [`StaticKVCache`][lego.layers.StaticKVCache] of
  [`StaticLayerKVCache`][lego.layers.StaticLayerKVCache];
- the block: [`TransformerBlock`][lego.layers.TransformerBlock];
- initialization, parameter counting and FLOPs estimates.
"""

from lego.layers.__about__ import __version__
from lego.layers.activations import ACTIVATIONS, get_activation
from lego.layers.attention import CausalSelfAttention
from lego.layers.block import TransformerBlock
from lego.layers.counting import count_parameters, flops_per_token, parameter_breakdown
from lego.layers.embedding import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
)
from lego.layers.experts import ExpertList, GatedExperts
from lego.layers.feedforward import MLP, GatedMLP, GeGLU, SwiGLU
from lego.layers.init import init_gpt2_, init_normal_, scale_residual_projections_
from lego.layers.kv_cache import StaticKVCache, StaticLayerKVCache
from lego.layers.mask import build_attention_mask, causal_mask, position_ids_from_padding
from lego.layers.moe import MoEFeedForward
from lego.layers.norm import LayerNorm, QKNorm, RMSNorm
from lego.layers.rope import RotaryEmbedding, apply_rotary
from lego.layers.rope_scaling import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    NTKScaling,
    RopeScaling,
    rope_inverse_frequencies,
    rope_scaling_from_dict,
)
from lego.layers.router import RouterOutput, TopKRouter, load_balancing_loss

__all__ = [
    "__version__",
    # embeddings and positions
    "TokenEmbedding",
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEmbedding",
    "RotaryEmbedding",
    "apply_rotary",
    "RopeScaling",
    "LinearScaling",
    "NTKScaling",
    "DynamicNTKScaling",
    "Llama3Scaling",
    "rope_inverse_frequencies",
    "rope_scaling_from_dict",
    # norms
    "LayerNorm",
    "RMSNorm",
    "QKNorm",
    # feed-forwards
    "ACTIVATIONS",
    "get_activation",
    "MLP",
    "GatedMLP",
    "SwiGLU",
    "GeGLU",
    # mixture of experts
    "TopKRouter",
    "RouterOutput",
    "load_balancing_loss",
    "GatedExperts",
    "ExpertList",
    "MoEFeedForward",
    # initialization, counting, FLOPs
    "init_normal_",
    "scale_residual_projections_",
    "init_gpt2_",
    "count_parameters",
    "parameter_breakdown",
    "flops_per_token",
    # attention, masks, KV cache, block
    "CausalSelfAttention",
    "causal_mask",
    "build_attention_mask",
    "position_ids_from_padding",
    "StaticLayerKVCache",
    "StaticKVCache",
    "TransformerBlock",
]
