"""lego-layers: our transformer pieces against the straightforward way of writing them.

The file is shared by the two parts of lego-layers. Each part adds one *section*: a
function ``(quick) -> Section`` appended to ``SECTIONS``; ``run`` concatenates the sections'
rows, settings and notes into one result (``results/layers.md``). Every section builds one
input, checks that both sides agree on it, then times them side by side with ``compare``.

Sections:

- ``moe_section``: the mixture-of-experts feed-forward (sorted, expert-contiguous dispatch)
  against the per-expert ``torch.where`` / ``index_add_`` loop of transformers' eager MoE
  blocks, with the same weights.
- ``attention_section``: ``CausalSelfAttention`` forward + backward with the ``sdpa``
  backend against the ``math`` backend (explicit softmax), same weights.
- ``decode_section``: one KV-cached decode step through a stack of blocks against
  recomputing the whole sequence without a cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks._harness import (
    BenchResult,
    Row,
    autonumber,
    compare,
    log,
    per_second,
    timeit_best,
)
from lego.layers import (
    CausalSelfAttention,
    GatedExperts,
    GatedMLP,
    MoEFeedForward,
    RMSNorm,
    RotaryEmbedding,
    StaticKVCache,
    TopKRouter,
    TransformerBlock,
    __version__,
)

OURS = f"lego-layers {__version__}"


@dataclass
class Section:
    """The rows, settings and notes one part of the benchmark contributes."""

    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- mixture of experts ------------------------------------------------------------------


def naive_moe(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The per-expert loop: for each expert, find its (token, slot) pairs with torch.where,
    run it on those tokens, weight, and index_add_ into the output (transformers' eager
    Mixtral / Qwen-MoE pattern)."""
    experts = moe.experts
    assert isinstance(experts, GatedExperts)
    flat = x.reshape(-1, x.shape[-1])  # (N, D)
    route = moe.router(flat)
    out = torch.zeros_like(flat)  # (N, D)
    for e in range(moe.n_experts):
        token_idx, slot = torch.where(route.indices == e)  # (M_e,), (M_e,)
        if token_idx.numel() == 0:
            continue
        y = experts.expert(e, flat[token_idx])  # (M_e, D)
        out.index_add_(0, token_idx, y * route.weights[token_idx, slot, None])
    return out.view_as(x)


def moe_section(quick: bool) -> Section:
    n_experts, top_k, d_model, d_ff = 8, 2, 512, 1024
    n_tokens = 1024 if quick else 4096
    repeat = 3 if quick else 7
    min_time = 0.05 if quick else 0.5
    torch.manual_seed(0)
    moe = MoEFeedForward(
        router=TopKRouter(d_model=d_model, n_experts=n_experts, top_k=top_k, norm_topk_prob=True),
        experts=GatedExperts(n_experts=n_experts, d_model=d_model, d_ff=d_ff),
    )
    x = torch.randn(1, n_tokens, d_model)
    with torch.no_grad():
        ours_out, peer_out = moe(x), naive_moe(moe, x)
    if not torch.allclose(ours_out, peer_out, rtol=1e-4, atol=1e-5):
        diff = (ours_out - peer_out).abs().max().item()
        raise RuntimeError(f"MoE: the two dispatches disagree (max abs diff {diff:.3g})")

    def ours_forward() -> None:
        with torch.no_grad():
            moe(x)

    def peer_forward() -> None:
        with torch.no_grad():
            naive_moe(moe, x)

    def ours_train() -> None:
        moe.zero_grad(set_to_none=True)
        torch.autograd.backward(moe(x).square().mean())

    def peer_train() -> None:
        moe.zero_grad(set_to_none=True)
        torch.autograd.backward(naive_moe(moe, x).square().mean())

    section = Section()
    numbers: dict[str, int] = {}
    cases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("MoE forward", ours_forward, peer_forward),
        ("MoE forward + backward", ours_train, peer_train),
    ]
    for what, ours, peer in cases:
        log(f"  {what} ...")
        number = autonumber(ours, min_time=min_time)
        numbers[what] = number
        t_ours, t_peer = compare(ours, peer, repeat=repeat, number=number)
        section.rows.append(
            Row(
                what=what,
                ours=n_tokens * per_second(t_ours),
                peer="per-expert torch.where loop",
                peer_value=n_tokens * per_second(t_peer),
                unit="tokens/s",
                note=f"{n_experts} experts top-{top_k}, d_model {d_model}, d_ff {d_ff}, "
                f"{n_tokens} tokens, fp32",
            )
        )
    section.params["moe"] = {
        "n_experts": n_experts,
        "top_k": top_k,
        "d_model": d_model,
        "d_ff": d_ff,
        "tokens": n_tokens,
        "repeat": repeat,
        "calls_per_timing": numbers,
    }
    section.notes.append(
        "MoE: both sides use the same router and stacked SwiGLU expert weights and give the "
        "same output (checked before timing); ours sorts the token slots by expert and runs "
        "each expert on a contiguous slice, the peer finds each expert's tokens with "
        "torch.where and index_add_s the weighted outputs (transformers' eager loop)."
    )
    return section


# --- attention: the SDPA backend against the explicit math backend ---------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _train_step(attn: CausalSelfAttention, x: torch.Tensor) -> None:
    attn.zero_grad(set_to_none=True)
    torch.autograd.backward(attn(x).float().square().mean())


def attention_section(quick: bool) -> Section:
    batch, d_model, n_heads = 4, 512, 8
    lengths = (256,) if quick else (256, 1024)
    dtypes = (torch.float32,) if quick else (torch.float32, torch.bfloat16)
    repeat = 3 if quick else 5
    min_time = 0.05 if quick else 0.5
    section = Section()
    numbers: dict[str, int] = {}
    for dtype in dtypes:
        for seq_len in lengths:
            if dtype == torch.bfloat16 and seq_len > 256:
                continue  # bf16 matmuls are slow on most CPUs; one length shows the trend
            torch.manual_seed(0)
            sdpa = CausalSelfAttention.build(
                d_model=d_model,
                n_heads=n_heads,
                rotary=RotaryEmbedding(head_dim=d_model // n_heads),
                backend="sdpa",
                dtype=dtype,
            )
            math = CausalSelfAttention.build(
                d_model=d_model,
                n_heads=n_heads,
                rotary=RotaryEmbedding(head_dim=d_model // n_heads),
                backend="math",
                dtype=dtype,
            )
            math.load_state_dict(sdpa.state_dict())
            x = torch.randn(batch, seq_len, d_model, dtype=dtype)
            with torch.no_grad():
                diff = (sdpa(x) - math(x)).abs().max().item()
            if diff > (1e-4 if dtype == torch.float32 else 5e-2):
                raise RuntimeError(f"attention: the backends disagree (max abs diff {diff:.3g})")

            ours = functools.partial(_train_step, sdpa, x)
            peer = functools.partial(_train_step, math, x)
            what = f"attention forward + backward, T={seq_len}, {_dtype_name(dtype)}"
            log(f"  {what} ...")
            number = autonumber(ours, min_time=min_time)
            numbers[what] = number
            t_ours, t_peer = compare(ours, peer, repeat=repeat, number=number)
            section.rows.append(
                Row(
                    what=what,
                    ours=batch * seq_len * per_second(t_ours),
                    peer="math backend (explicit softmax)",
                    peer_value=batch * seq_len * per_second(t_peer),
                    unit="tokens/s",
                    note=f"sdpa backend, B={batch}, d_model {d_model}, {n_heads} heads, RoPE",
                )
            )
    section.params["attention"] = {
        "batch": batch,
        "d_model": d_model,
        "n_heads": n_heads,
        "lengths": list(lengths),
        "dtypes": [_dtype_name(d) for d in dtypes],
        "repeat": repeat,
        "calls_per_timing": numbers,
    }
    section.notes.append(
        "Attention: the same CausalSelfAttention weights run by the `sdpa` backend "
        "(torch.nn.functional.scaled_dot_product_attention with is_causal=True, so the fused "
        "CPU flash kernel is used) and by the `math` backend (Q K^T, fp32 softmax, times V, "
        "materializing the (B, heads, T, T) scores); outputs agree (checked before timing)."
    )
    return section


# --- KV-cached decoding: one cached step against recomputing the whole sequence ----------


def decode_section(quick: bool) -> Section:
    n_layers, d_model, n_heads, n_kv_heads, d_ff = 4, 512, 8, 2, 1536
    context = 128 if quick else 512
    repeat = 3 if quick else 7
    min_time = 0.05 if quick else 0.5
    head_dim = d_model // n_heads
    torch.manual_seed(0)
    rotary = RotaryEmbedding(head_dim=head_dim)
    blocks = [
        TransformerBlock(
            attention=CausalSelfAttention.build(
                d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, rotary=rotary
            ),
            attention_norm=RMSNorm(dim=d_model),
            feed_forward=GatedMLP.build(d_model=d_model, d_ff=d_ff),
            ffn_norm=RMSNorm(dim=d_model),
        ).eval()
        for _ in range(n_layers)
    ]
    x = torch.randn(1, context + 1, d_model)  # the prompt and the next token's embedding

    def forward(h: torch.Tensor, cache: StaticKVCache | None) -> torch.Tensor:
        for i, block in enumerate(blocks):
            h = block(h, kv_cache=None if cache is None else cache[i])
        return h

    cache = StaticKVCache(
        n_layers=n_layers,
        batch_size=1,
        max_seq_len=context + 1,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
    )
    with torch.no_grad():
        forward(x[:, :context], cache)  # prefill
        step = forward(x[:, context:], cache)
        full = forward(x, None)[:, context:]
    if not torch.allclose(step, full, rtol=1e-4, atol=1e-4):
        diff = (step - full).abs().max().item()
        raise RuntimeError(f"decode: cached and full forward disagree (max abs diff {diff:.3g})")

    def cached_step() -> None:
        cache.crop(context)  # drop the previous step's token, keep the prompt
        with torch.no_grad():
            forward(x[:, context:], cache)

    def recompute() -> None:
        with torch.no_grad():
            forward(x, None)

    what = f"decode one token after {context} ({n_layers} blocks)"
    log(f"  {what} ...")
    # One recompute costs as much as many cached steps: each timed call of ours runs
    # `steps` cached steps, so both sides' calls take about as long and one `number` suits
    # both (the cached step is reported per step).
    t_step = timeit_best(cached_step, repeat=3, number=5)
    t_full = timeit_best(recompute, repeat=3, number=1)
    steps = max(1, min(500, round(t_full / t_step)))

    def cached_steps() -> None:
        for _ in range(steps):
            cached_step()

    number = autonumber(recompute, min_time=min_time)
    t_ours, t_peer = compare(cached_steps, recompute, repeat=repeat, number=number)
    t_ours /= steps
    section = Section()
    section.rows.append(
        Row(
            what=what,
            ours=per_second(t_ours),
            peer="recompute the full sequence (no cache)",
            peer_value=per_second(t_peer),
            unit="tokens/s",
            note=f"StaticKVCache, d_model {d_model}, {n_heads} heads / {n_kv_heads} kv heads, "
            f"SwiGLU {d_ff}, B=1, fp32",
        )
    )
    section.params["decode"] = {
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_ff": d_ff,
        "context": context,
        "repeat": repeat,
        "calls_per_timing": number,
        "cached_steps_per_call": steps,
    }
    section.notes.append(
        "Decode: a stack of Llama-style blocks (RMSNorm, GQA attention with RoPE, SwiGLU) "
        "computes the next token's hidden state either from a StaticKVCache holding the "
        "prompt (one token through every block) or by recomputing the whole prompt plus the "
        "token without a cache; both give the same state (checked before timing)."
    )
    return section


# --- the sections, in report order --------------------------------------------------------

SECTIONS: list[Callable[[bool], Section]] = [moe_section, attention_section, decode_section]


def run(quick: bool) -> BenchResult:
    rows: list[Row] = []
    params: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    notes: list[str] = []
    for section_fn in SECTIONS:
        section = section_fn(quick)
        rows += section.rows
        params.update(section.params)
        notes += section.notes
    return BenchResult(
        name="layers",
        title=f"Transformer layers: {OURS} side by side with the straightforward versions",
        description=(
            "Each row runs one lego-layers module and the plain way of computing the same "
            "thing on the same input in the same process, interleaved; higher tokens/s is "
            "better. CPU, fp32 unless a row says otherwise."
        ),
        rows=rows,
        params=params,
        notes=notes,
    )
