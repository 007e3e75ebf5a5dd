"""GPT-2 in one file: the whole model, top to bottom, in plain PyTorch.

This file is for reading. It builds the same network as transformers' ``GPT2LMHeadModel``
and loads the same ``model.safetensors`` files, with nothing else in the way: no KV cache,
no dropout, no training extras. Everything else in LegoLLM uses the modular build,
``lego.arch.DecoderLM`` (``lego.arch.build("gpt2")``,
``lego.arch.from_hf(path)``), assembled from lego-layers bricks; the tests check that both
give the same logits, and the same logits as transformers.

Read it in this order: ``GPT2Config`` (the numbers), ``Attention``, ``MLP``, ``Block``,
``GPT2`` (the model), then ``load_hf`` (HF tensor names to ours). Shapes use ``B`` batch,
``T`` tokens, ``C`` width (``n_embd``), ``nh`` heads, ``hd`` head size (``C // nh``).

    >>> import torch
    >>> from lego.arch.reference.gpt2 import GPT2, GPT2Config
    >>> config = GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    >>> model = GPT2(config)
    >>> model(torch.randint(0, 100, (2, 8))).shape
    torch.Size([2, 8, 100])

With a real checkpoint (a folder with ``config.json`` and ``model.safetensors``, e.g.
``openai-community/gpt2`` from the Hub):

```python
from lego.arch.reference.gpt2 import load_hf

model = load_hf("path/to/gpt2")  # (B, T) token ids -> (B, T, 50257) logits
```
"""

# B, T, C and F are PyTorch's usual names (batch, time, channels, functional).

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

__all__ = ["GPT2", "GPT2Config", "load_hf"]


# -- 1. The numbers -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """The sizes of a GPT-2, named as in HF's ``config.json`` (defaults: the 124M model).

    Attributes:
        vocab_size: Token ids are ``0 .. vocab_size - 1``.
        n_positions: Rows of the learned position table: the longest input.
        n_embd: Width ``C`` of every token's vector.
        n_layer: Number of blocks.
        n_head: Attention heads; each is ``n_embd // n_head`` wide.
        n_inner: Hidden width of the MLP; None means ``4 * n_embd``.
        layer_norm_epsilon: LayerNorm's epsilon.
        tie_word_embeddings: The output head is the token embedding (GPT-2: yes).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf_config(cls, data: dict[str, Any]) -> GPT2Config:
        """Read the fields of a parsed HF ``config.json``.

        Args:
            data: The mapping, e.g. ``json.loads(Path("gpt2/config.json").read_text())``.

        Returns:
            The config; fields this file does not need (dropout, token ids...) are ignored.

        Raises:
            ValueError: Not a GPT-2 config, or an activation other than GELU-tanh.
        """
        if data.get("model_type", "gpt2") != "gpt2":
            raise ValueError(
                f"config.json: model_type={data['model_type']!r}, this file reads 'gpt2' "
                "(hint: use lego.arch.reference.llama3 or .qwen3, or lego.arch.from_hf)"
            )
        activation = data.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"config.json: activation_function={activation!r}; this file implements "
                "GELU with the tanh approximation ('gelu_new') only"
            )
        return cls(
            vocab_size=data["vocab_size"],
            n_positions=data.get("n_positions", 1024),
            n_embd=data["n_embd"],
            n_layer=data["n_layer"],
            n_head=data["n_head"],
            n_inner=data.get("n_inner"),
            layer_norm_epsilon=data.get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=data.get("tie_word_embeddings", True),
        )


# -- 2. The model ---------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal multi-head self-attention with one fused ``[q | k | v]`` projection.

    Every head has its own query, key and value (multi-head attention); every projection
    has a bias.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # HF: attn.c_attn
        self.out = nn.Linear(config.n_embd, config.n_embd)  # HF: attn.c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix each token with the tokens before it.

        Args:
            x: ``(B, T, C)``.

        Returns:
            ``(B, T, C)``.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        # softmax(q k^T / sqrt(hd) + causal mask) v: token t sees tokens 0..t only
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): the heads side by side
        out: torch.Tensor = self.out(y)  # (B, T, C)
        return out


class MLP(nn.Module):
    """Two linear layers with a GELU (tanh approximation) between them."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        hidden = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.fc = nn.Linear(config.n_embd, hidden)  # HF: mlp.c_fc
        self.proj = nn.Linear(hidden, config.n_embd)  # HF: mlp.c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform each token on its own.

        Args:
            x: ``(B, T, C)``.

        Returns:
            ``(B, T, C)``.
        """
        h = F.gelu(self.fc(x), approximate="tanh")  # (B, T, 4C)
        out: torch.Tensor = self.proj(h)  # (B, T, C)
        return out


class Block(nn.Module):
    """One pre-norm residual block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)  # HF: ln_1
        self.attn = Attention(config)
        self.norm_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)  # HF: ln_2
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, T, C)``.

        Returns:
            ``(B, T, C)``.
        """
        x = x + self.attn(self.norm_1(x))  # (B, T, C)
        out: torch.Tensor = x + self.mlp(self.norm_2(x))  # (B, T, C)
        return out


class GPT2(nn.Module):
    """GPT-2: token + learned position embeddings, ``n_layer`` blocks, LayerNorm, LM head.

    Args:
        config: The sizes.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)  # HF: wte
        self.pos_emb = nn.Embedding(config.n_positions, config.n_embd)  # HF: wpe
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))  # HF: h
        self.norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)  # HF: ln_f
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix, read both ways

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Score every possible next token after every position.

        Args:
            input_ids: Token ids ``(B, T)``, ``T <= n_positions``.

        Returns:
            Logits ``(B, T, vocab_size)``: row ``t`` scores the token after ``input_ids[:, t]``.
        """
        T = input_ids.shape[1]  # input_ids: (B, T)
        positions = torch.arange(T, device=input_ids.device)  # (T,): 0, 1, ..., T-1
        x = self.tok_emb(input_ids) + self.pos_emb(positions)  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.norm(x)  # (B, T, C)
        logits: torch.Tensor = self.lm_head(x)  # (B, T, vocab_size)
        return logits


# -- 3. Loading HF weights ------------------------------------------------------------------

TOP_NAMES = {  # HF name -> our name, outside the blocks
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
}

BLOCK_NAMES = {  # HF name inside block i ("h.{i}.") -> our name inside "blocks.{i}."
    "ln_1.weight": "norm_1.weight",
    "ln_1.bias": "norm_1.bias",
    "attn.c_attn.weight": "attn.qkv.weight",
    "attn.c_attn.bias": "attn.qkv.bias",
    "attn.c_proj.weight": "attn.out.weight",
    "attn.c_proj.bias": "attn.out.bias",
    "ln_2.weight": "norm_2.weight",
    "ln_2.bias": "norm_2.bias",
    "mlp.c_fc.weight": "mlp.fc.weight",
    "mlp.c_fc.bias": "mlp.fc.bias",
    "mlp.c_proj.weight": "mlp.proj.weight",
    "mlp.c_proj.bias": "mlp.proj.bias",
}

# GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Old checkpoints also hold the causal mask as a buffer: SDPA's is_causal replaces it.
MASK_BUFFERS = ("attn.bias", "attn.masked_bias")


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
        hf_name: E.g. ``"transformer.h.3.attn.c_attn.weight"`` (the Hub's original ``gpt2``
            files have no ``transformer.`` prefix).

    Returns:
        E.g. ``"blocks.3.attn.qkv.weight"``.

    Raises:
        ValueError: A name GPT-2 does not have.
    """
    name = hf_name.removeprefix("transformer.")
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    if name == "lm_head.weight":
        return name
    if name.startswith("h."):
        layer, rest = name.removeprefix("h.").split(".", 1)  # "3", "attn.c_attn.weight"
        if rest in MASK_BUFFERS:
            return None
        if rest in BLOCK_NAMES:
            return f"blocks.{layer}.{BLOCK_NAMES[rest]}"
    raise ValueError(f"tensor={hf_name!r} is not part of a GPT2LMHeadModel")


def load_hf(model_dir: str | Path) -> GPT2:
    """Load a transformers ``GPT2LMHeadModel`` folder into ``GPT2``.

    Args:
        model_dir: A folder with ``config.json`` and ``model.safetensors`` (or shards with
            ``model.safetensors.index.json``).

    Returns:
        The model in eval mode, in the file's dtype, on the CPU.

    Raises:
        ValueError: Not a GPT-2 folder (see ``GPT2Config.from_hf_config`` and ``our_name``).
        RuntimeError: Tensors missing or mis-shaped (from ``load_state_dict``).
    """
    model_dir = Path(model_dir)
    config = GPT2Config.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for hf_name, tensor in read_safetensors(model_dir).items():
        name = our_name(hf_name)
        if name is None:
            continue
        if hf_name.endswith(CONV1D):
            tensor = tensor.t()  # (in, out) -> (out, in)
        state[name] = tensor
    if config.tie_word_embeddings:  # the head is the embedding, whatever the file holds
        state["lm_head.weight"] = state["tok_emb.weight"]
    with torch.device("meta"):  # build without allocating: the file's tensors come next
        model = GPT2(config)
    model.load_state_dict(state, strict=True, assign=True)  # take the tensors as they are
    if config.tie_word_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # assign=True made two parameters
    return model.eval()
