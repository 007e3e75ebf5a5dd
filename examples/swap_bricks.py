"""Swap one brick at a time, GPT-2 -> Llama style -> mixture of experts, and compare losses.

A lego-arch model is one program (``DecoderLM``) whose parts are named in its config, so a
variant is the same config with one field changed:

1. ``gpt2``: multi-head attention, LayerNorm, learned positions, GELU MLP;
2. ``+ GQA``: 4 query heads share 2 key/value heads (``n_kv_heads=2``);
3. ``+ RMSNorm``: ``norm="rmsnorm"`` (its bias goes with it: ``norm_bias`` follows the norm);
4. ``+ RoPE``: positions rotate queries and keys (``positions="rope"``) instead of a table;
5. ``+ SwiGLU``: a gated feed-forward (``ffn="swiglu"``: SiLU on the gate, which the name
   brings with it) with 2/3 of the hidden width, so it keeps the parameter count (and no
   biases, as in Llama);
6. ``+ MoE``: 4 SwiGLU experts of half that width, 2 per token (``ffn="moe"``): the same
   compute per token with twice the feed-forward parameters, plus the router's aux loss.

A field tied to a component (``norm_bias`` to the norm, ``activation`` and ``mlp_bias`` to
the feed-forward) follows the component when it still holds the old component's default,
so ``replace(ffn="swiglu")`` of the GELU MLP gives SiLU, not a GELU-gated GeGLU. The script
prints the feed-forward each variant actually built.

Every variant starts from the same seed and trains on the same batches of the embedded
``python-stdlib`` corpus (bytes as tokens: no tokenizer to train), and the script prints
each one's parameters and validation loss. On this little data the differences are small;
the point is that each swap is one line of config.

    python examples/swap_bricks.py [--quick] [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias

from lego.arch import DecoderConfig, DecoderLM
from lego.data.corpora import PythonStdlibCorpus
from lego.layers import MLP, GatedMLP, MoEFeedForward


def byte_tokens(max_bytes: int) -> torch.Tensor:
    """The first ``max_bytes`` bytes of the python-stdlib corpus as ids 0..255."""
    data = bytearray()
    for document in PythonStdlibCorpus().iter_documents():
        data += document.encode("utf-8") + b"\0"  # byte 0 ends a document
        if len(data) >= max_bytes:
            break
    return torch.tensor(list(data[:max_bytes]), dtype=torch.long)


def variants(base: DecoderConfig) -> dict[str, DecoderConfig]:
    """Each variant is the previous one with one brick swapped."""
    out = {"gpt2": base}
    out["+ GQA"] = out["gpt2"].replace(n_kv_heads=2, fused_qkv=False)
    out["+ RMSNorm"] = out["+ GQA"].replace(norm="rmsnorm")  # norm_bias=False follows
    out["+ RoPE"] = out["+ RMSNorm"].replace(positions="rope")
    # activation="silu" follows the name; the biases go too, as in Llama
    out["+ SwiGLU"] = out["+ RoPE"].replace(ffn="swiglu", d_ff=base.d_ff * 2 // 3, mlp_bias=False)
    # 4 experts of half the width, 2 per token: the same compute per token as + SwiGLU
    moe_d_ff = base.d_ff // 3
    out["+ MoE"] = out["+ SwiGLU"].replace(
        ffn="moe", n_experts=4, experts_top_k=2, moe_d_ff=moe_d_ff
    )
    return out


def describe_ffn(model: DecoderLM) -> str:
    """The feed-forward a model really built, e.g. ``GatedMLP(silu)``."""
    ffn = model.blocks[0].feed_forward
    if isinstance(ffn, MoEFeedForward):  # a mixture of experts: the experts' activation
        return f"MoE({getattr(ffn.experts, 'activation', '?')}, {ffn.router.n_experts} experts)"
    if isinstance(ffn, (MLP, GatedMLP)):
        return f"{type(ffn).__name__}({ffn.activation})"
    return type(ffn).__name__


def batches(tokens: torch.Tensor, *, batch: int, context: int, seed: int) -> torch.Tensor:
    """Random windows ``(batch, context + 1)`` drawn with a fixed seed (the same for all)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - context - 1, (batch,), generator=generator)
    return torch.stack([tokens[s : s + context + 1] for s in starts.tolist()])


def loss_of(model: DecoderLM, window: torch.Tensor) -> torch.Tensor:
    logits = model(window[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())


def train(
    config: DecoderConfig, train_ids: torch.Tensor, val_ids: torch.Tensor, steps: int
) -> float:
    torch.manual_seed(0)  # the same initial draw for every variant
    model = DecoderLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    context = config.context_length
    for step in range(steps):
        window = batches(train_ids, batch=16, context=context, seed=step)
        loss = loss_of(model, window) + model.aux_loss  # aux_loss is 0 without experts
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # loss.backward(), typed
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        losses = [
            loss_of(model, batches(val_ids, batch=16, context=context, seed=10_000 + i))
            for i in range(4)
        ]
    return float(torch.stack(losses).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of tiny models")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    steps = 5 if args.quick else args.steps
    torch.set_num_threads(min(2, torch.get_num_threads()))

    tokens = byte_tokens(200_000 if args.quick else 2_000_000)
    split = int(len(tokens) * 0.9)
    train_ids, val_ids = tokens[:split], tokens[split:]
    base = DecoderConfig(
        family="custom", vocab_size=256, context_length=64 if args.quick else 128,
        d_model=64 if args.quick else 128, n_layers=2 if args.quick else 4, n_heads=4,
        d_ff=256 if args.quick else 512, fused_qkv=True, scale_residual_init=True,
    )  # fmt: skip
    print(f"uniform guess: loss {math.log(256):.3f}; {steps} steps of batch 16 per variant")
    for name, config in variants(base).items():
        start = time.perf_counter()
        model = DecoderLM.from_config(config)
        n = sum(p.numel() for p in model.parameters())
        ffn = describe_ffn(model)
        if name == "+ SwiGLU":
            assert config.activation == "silu", config.activation  # a real SwiGLU, not GeGLU
            assert ffn == "GatedMLP(silu)", ffn
        val = train(config, train_ids, val_ids, steps)
        seconds = time.perf_counter() - start
        print(
            f"{name:>10}: {n / 1e6:5.2f}M parameters, {ffn:<22} val loss {val:.3f} "
            f"({seconds:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
