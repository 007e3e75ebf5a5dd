"""Llama 3 in one file: the whole model, top to bottom, in plain PyTorch.

This file is for reading. It builds the same network as transformers' ``LlamaForCausalLM``
(Llama 3, 3.1 and 3.2) and loads the same ``model.safetensors`` files, with nothing else in
the way: no KV cache, no dropout, no training extras. Everything else in LegoLLM uses the
modular build, ``lego.arch.DecoderLM`` (``lego.arch.build("llama-3.2-1b")``,
``lego.arch.from_hf(path)``), assembled from lego-layers bricks; the tests check that both
give the same logits, and the same logits as transformers.

Compared with GPT-2, a Llama 3 has rotary position embeddings (RoPE, with Llama 3.1's
frequency scaling) instead of a position table, RMSNorm instead of LayerNorm, grouped-query
attention (several query heads share one key/value head), a SwiGLU MLP, and no biases.

Read it in this order: ``Llama3Config`` (the numbers), ``rope_frequencies`` and
``apply_rope``, ``RMSNorm``, ``Attention``, ``MLP``, ``Block``, ``Llama3`` (the model), then
``load_hf`` (HF tensor names to ours). Shapes use ``B`` batch, ``T`` tokens, ``C`` width
(``hidden_size``), ``nh`` query heads, ``nkv`` key/value heads, ``hd`` head size, ``F`` the
MLP's hidden width (``intermediate_size``).

    >>> import torch
    >>> from lego.arch.reference.llama3 import Llama3, Llama3Config
    >>> config = Llama3Config(
    ...     vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    ... )
    >>> model = Llama3(config)
    >>> model(torch.randint(0, 100, (2, 8))).shape
    torch.Size([2, 8, 100])

With a real checkpoint (a folder with ``config.json`` and ``model.safetensors``, e.g.
``meta-llama/Llama-3.2-1B`` from the Hub):

```python
from lego.arch.reference.llama3 import load_hf

model = load_hf("path/to/Llama-3.2-1B")  # (B, T) token ids -> (B, T, 128256) logits
```
"""

# B, T, C and F are PyTorch's usual names (batch, time, channels, functional).

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

__all__ = ["Llama3", "Llama3Config", "load_hf"]


# -- 1. The numbers -------------------------------------------------------------------------


def _llama32_rope_scaling() -> dict[str, Any]:
    return {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


@dataclass(frozen=True, kw_only=True)
class Llama3Config:
    """The sizes of a Llama 3, named as in HF's ``config.json`` (defaults: Llama 3.2 1B).

    Attributes:
        vocab_size: Token ids are ``0 .. vocab_size - 1``.
        hidden_size: Width ``C`` of every token's vector.
        intermediate_size: Hidden width ``F`` of the SwiGLU MLP.
        num_hidden_layers: Number of blocks.
        num_attention_heads: Query heads ``nh``.
        num_key_value_heads: Key/value heads ``nkv``, dividing ``nh`` (grouped-query
            attention; ``nkv == nh`` is plain multi-head attention).
        head_dim: Head size ``hd``; None means ``hidden_size // num_attention_heads``.
        max_position_embeddings: The longest input the model was made for.
        rms_norm_eps: RMSNorm's epsilon.
        rope_theta: RoPE's base: pair ``i`` of a head turns by ``rope_theta ** (-2i / hd)``
            radians per position.
        rope_scaling: None (plain RoPE, Llama 3.0) or Llama 3.1's ``{"rope_type": "llama3",
            "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}``.
        attention_bias: Biases on the q/k/v/o projections (Llama 3: no).
        mlp_bias: Biases in the MLP (Llama 3: no).
        tie_word_embeddings: The output head is the token embedding (3.2 1B/3B: yes).
    """

    vocab_size: int = 128256
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 16
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=_llama32_rope_scaling)
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf_config(cls, data: dict[str, Any]) -> Llama3Config:
        """Read the fields of a parsed HF ``config.json``.

        Both spellings of RoPE's settings are read: the Hub's ``rope_theta`` +
        ``rope_scaling``, and transformers 5's ``rope_parameters`` (the two in one mapping).

        Args:
            data: The mapping, e.g. ``json.loads(Path("llama/config.json").read_text())``.

        Returns:
            The config; fields this file does not need (dropout, token ids...) are ignored.

        Raises:
            ValueError: Not a Llama config, an activation other than SiLU, or a RoPE
                scaling other than none or ``"llama3"``.
        """
        if data.get("model_type", "llama") != "llama":
            raise ValueError(
                f"config.json: model_type={data['model_type']!r}, this file reads 'llama' "
                "(hint: use lego.arch.reference.gpt2 or .qwen3, or lego.arch.from_hf)"
            )
        if data.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act={data['hidden_act']!r}, expected 'silu'")
        rope = dict(data.get("rope_parameters") or data.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", data.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "llama3"):
            raise ValueError(
                f"config.json: rope_type={kind!r}; this file implements plain RoPE and "
                "'llama3' scaling (hint: lego.arch.from_hf reads the other variants)"
            )
        heads = data["num_attention_heads"]
        return cls(
            vocab_size=data["vocab_size"],
            hidden_size=data["hidden_size"],
            intermediate_size=data["intermediate_size"],
            num_hidden_layers=data["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=data.get("num_key_value_heads") or heads,
            head_dim=data.get("head_dim"),
            max_position_embeddings=data.get("max_position_embeddings", 2048),
            rms_norm_eps=data.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=rope if kind == "llama3" else None,
            attention_bias=data.get("attention_bias", False),
            mlp_bias=data.get("mlp_bias", False),
            tie_word_embeddings=data.get("tie_word_embeddings", False),
        )

    @property
    def head_size(self) -> int:
        """``hd``: ``head_dim``, or ``hidden_size // num_attention_heads`` when unset."""
        return self.head_dim or self.hidden_size // self.num_attention_heads


# -- 2. Rotary position embeddings ----------------------------------------------------------


def rope_frequencies(config: Llama3Config, device: torch.device) -> torch.Tensor:
    """The angle each pair of a head turns per position, with Llama 3.1's scaling.

    Plain RoPE: pair ``i`` turns by ``theta_i = rope_theta ** (-2i / hd)`` per position.
    Llama 3.1 stretches the context ``factor`` times by slowing down the slow pairs: a pair
    whose wavelength ``2 pi / theta_i`` exceeds ``original / low_freq_factor`` tokens turns
    ``factor`` times slower, one shorter than ``original / high_freq_factor`` is kept, and
    the pairs in between blend the two smoothly.

    Args:
        config: ``head_size``, ``rope_theta`` and ``rope_scaling``.
        device: Where to build the tensor.

    Returns:
        ``theta``, shape ``(hd // 2,)``, fp32.
    """
    hd = config.head_size
    exponents = torch.arange(0, hd, 2, dtype=torch.int64, device=device).float()  # (hd/2,)
    theta = 1.0 / (config.rope_theta ** (exponents / hd))  # (hd/2,)
    if config.rope_scaling is None:
        return theta
    s = config.rope_scaling
    original = s["original_max_position_embeddings"]
    wavelength = 2 * math.pi / theta  # (hd/2,): tokens per full turn
    slow = wavelength > original / s["low_freq_factor"]  # (hd/2,): interpolate these
    fast = wavelength < original / s["high_freq_factor"]  # (hd/2,): keep these
    scaled = torch.where(slow, theta / s["factor"], theta)  # (hd/2,)
    blend = (original / wavelength - s["low_freq_factor"]) / (
        s["high_freq_factor"] - s["low_freq_factor"]
    )  # (hd/2,): 0 at the slow end, 1 at the fast end
    medium = (1 - blend) * scaled / s["factor"] + blend * scaled  # (hd/2,)
    return torch.where(~slow & ~fast, medium, scaled)  # (hd/2,)


def rope_cos_sin(theta: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of every position's angles, each pair's angle written twice.

    Args:
        theta: ``(hd // 2,)`` from ``rope_frequencies``.
        T: Number of positions.

    Returns:
        ``cos, sin``, each ``(T, hd)``, fp32.
    """
    positions = torch.arange(T, device=theta.device).float()  # (T,)
    angles = torch.outer(positions, theta)  # (T, hd/2): position p turns pair i by p theta_i
    angles = torch.cat((angles, angles), dim=-1)  # (T, hd): HF pairs dim j with j + hd/2
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x[j], x[j + hd/2])`` of every head by its position's angle.

    Args:
        x: Queries or keys, ``(B, heads, T, hd)``.
        cos: ``(T, hd)``.
        sin: ``(T, hd)``.

    Returns:
        ``(B, heads, T, hd)``.
    """
    first, second = x.chunk(2, dim=-1)  # 2 x (B, heads, T, hd/2)
    rotated = torch.cat((-second, first), dim=-1)  # (B, heads, T, hd): "rotate half"
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)  # (B, heads, T, hd)


# -- 3. The model ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension (computed in fp32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize.

        Args:
            x: ``(..., dim)``.

        Returns:
            ``(..., dim)``, in ``x``'s dtype.
        """
        x32 = x.float()  # (..., dim)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., dim)
        return self.weight * x32.to(x.dtype)  # (..., dim)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE on queries and keys."""

    def __init__(self, config: Llama3Config) -> None:
        super().__init__()
        self.nh = config.num_attention_heads
        self.nkv = config.num_key_value_heads
        self.hd = config.head_size
        bias = config.attention_bias
        self.query = nn.Linear(config.hidden_size, self.nh * self.hd, bias=bias)  # HF: q_proj
        self.key = nn.Linear(config.hidden_size, self.nkv * self.hd, bias=bias)  # HF: k_proj
        self.value = nn.Linear(config.hidden_size, self.nkv * self.hd, bias=bias)  # HF: v_proj
        self.out = nn.Linear(self.nh * self.hd, config.hidden_size, bias=bias)  # HF: o_proj

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Mix each token with the tokens before it.

        Args:
            x: ``(B, T, C)``.
            cos: ``(T, hd)`` from ``rope_cos_sin``.
            sin: ``(T, hd)``.

        Returns:
            ``(B, T, C)``.
        """
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.nh, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.value(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q = apply_rope(q, cos, sin)  # (B, nh, T, hd): position enters here...
        k = apply_rope(k, cos, sin)  # (B, nkv, T, hd): ...so q.k depends on the distance
        # grouped-query attention: each key/value head serves nh // nkv query heads
        k = k.repeat_interleave(self.nh // self.nkv, dim=1)  # (B, nh, T, hd)
        v = v.repeat_interleave(self.nh // self.nkv, dim=1)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.nh * self.hd)  # (B, T, nh * hd)
        out: torch.Tensor = self.out(y)  # (B, T, C)
        return out


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: Llama3Config) -> None:
        super().__init__()
        C, hidden, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate = nn.Linear(C, hidden, bias=bias)  # HF: gate_proj
        self.up = nn.Linear(C, hidden, bias=bias)  # HF: up_proj
        self.down = nn.Linear(hidden, C, bias=bias)  # HF: down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform each token on its own.

        Args:
            x: ``(B, T, C)``.

        Returns:
            ``(B, T, C)``.
        """
        h = F.silu(self.gate(x)) * self.up(x)  # (B, T, F): the gate scales each unit
        out: torch.Tensor = self.down(h)  # (B, T, C)
        return out


class Block(nn.Module):
    """One pre-norm residual block: ``x + attn(norm_1(x))``, then ``x + mlp(norm_2(x))``."""

    def __init__(self, config: Llama3Config) -> None:
        super().__init__()
        C, eps = config.hidden_size, config.rms_norm_eps
        self.norm_1 = RMSNorm(C, eps)  # HF: input_layernorm
        self.attn = Attention(config)  # HF: self_attn
        self.norm_2 = RMSNorm(C, eps)  # HF: post_attention_layernorm
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, T, C)``.
            cos: ``(T, hd)``.
            sin: ``(T, hd)``.

        Returns:
            ``(B, T, C)``.
        """
        x = x + self.attn(self.norm_1(x), cos, sin)  # (B, T, C)
        out: torch.Tensor = x + self.mlp(self.norm_2(x))  # (B, T, C)
        return out


class Llama3(nn.Module):
    """Llama 3: token embedding, ``num_hidden_layers`` blocks, RMSNorm, LM head.

    There is no position table: positions enter as rotations of queries and keys inside
    every attention (RoPE).

    Args:
        config: The sizes.
    """

    def __init__(self, config: Llama3Config) -> None:
        super().__init__()
        self.config = config
        C = config.hidden_size
        self.tok_emb = nn.Embedding(config.vocab_size, C)  # HF: model.embed_tokens
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(C, config.rms_norm_eps)  # HF: model.norm
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix, read both ways

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Score every possible next token after every position.

        Args:
            input_ids: Token ids ``(B, T)``.

        Returns:
            Logits ``(B, T, vocab_size)``: row ``t`` scores the token after ``input_ids[:, t]``.
        """
        T = input_ids.shape[1]  # input_ids: (B, T)
        theta = rope_frequencies(self.config, input_ids.device)  # (hd/2,)
        cos, sin = rope_cos_sin(theta, T)  # (T, hd) each, shared by every block
        x = self.tok_emb(input_ids)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        x = self.norm(x)  # (B, T, C)
        logits: torch.Tensor = self.lm_head(x)  # (B, T, vocab_size)
        return logits


# -- 4. Loading HF weights ------------------------------------------------------------------

TOP_NAMES = {  # HF name -> our name, outside the blocks
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}

BLOCK_NAMES = {  # HF name inside "model.layers.{i}." -> our name inside "blocks.{i}."
    "input_layernorm.weight": "norm_1.weight",
    "self_attn.q_proj.weight": "attn.query.weight",
    "self_attn.k_proj.weight": "attn.key.weight",
    "self_attn.v_proj.weight": "attn.value.weight",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.q_proj.bias": "attn.query.bias",  # the biases: only with attention_bias
    "self_attn.k_proj.bias": "attn.key.bias",
    "self_attn.v_proj.bias": "attn.value.bias",
    "self_attn.o_proj.bias": "attn.out.bias",
    "post_attention_layernorm.weight": "norm_2.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight",
    "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
    "mlp.gate_proj.bias": "mlp.gate.bias",  # the biases: only with mlp_bias
    "mlp.up_proj.bias": "mlp.up.bias",
    "mlp.down_proj.bias": "mlp.down.bias",
}


def read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards its index lists.

    Args:
        model_dir: The folder.

    Returns:
        HF tensor name to tensor, as stored (dtype included).
    """
    index = model_dir / "model.safetensors.index.json"
    if not index.exists():
        return load_file(model_dir / "model.safetensors")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {name: t for shard in shards for name, t in load_file(model_dir / shard).items()}


def our_name(hf_name: str) -> str | None:
    """Translate one HF tensor name (None: a buffer we do not need).

    Args:
        hf_name: E.g. ``"model.layers.3.self_attn.q_proj.weight"``.

    Returns:
        E.g. ``"blocks.3.attn.query.weight"``.

    Raises:
        ValueError: A name Llama does not have.
    """
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):  # old checkpoints saved RoPE's theta
        return None
    if hf_name.startswith("model.layers."):
        layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)  # "3", "mlp..."
        if rest in BLOCK_NAMES:
            return f"blocks.{layer}.{BLOCK_NAMES[rest]}"
    raise ValueError(f"tensor={hf_name!r} is not part of a LlamaForCausalLM")


def load_hf(model_dir: str | Path) -> Llama3:
    """Load a transformers ``LlamaForCausalLM`` folder into ``Llama3``.

    Args:
        model_dir: A folder with ``config.json`` and ``model.safetensors`` (or shards with
            ``model.safetensors.index.json``).

    Returns:
        The model in eval mode, in the file's dtype, on the CPU.

    Raises:
        ValueError: Not a Llama folder (see ``Llama3Config.from_hf_config`` and
            ``our_name``).
        RuntimeError: Tensors missing or mis-shaped (from ``load_state_dict``).
    """
    model_dir = Path(model_dir)
    config = Llama3Config.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for hf_name, tensor in read_safetensors(model_dir).items():
        name = our_name(hf_name)
        if name is not None:
            state[name] = tensor  # Llama stores nn.Linear's (out, in): nothing to transpose
    if config.tie_word_embeddings:  # the head is the embedding, whatever the file holds
        state["lm_head.weight"] = state["tok_emb.weight"]
    with torch.device("meta"):  # build without allocating: the file's tensors come next
        model = Llama3(config)
    model.load_state_dict(state, strict=True, assign=True)  # take the tensors as they are
    if config.tie_word_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # assign=True made two parameters
    return model.eval()
