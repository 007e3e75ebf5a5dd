"""DecoderLM: the CausalLM contracts, shapes, causality, caching, padding, tying, training."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lego.arch import DecoderLM, DecoderOutput, build, get_preset
from lego.layers import StaticKVCache, TokenEmbedding, position_ids_from_padding
from lego.protocols import CachedCausalLM, CausalLM, CompatibilityError, ConfigError, DataError


def tiny_model(name: str, dtype: torch.dtype = torch.float32) -> DecoderLM:
    return build(name).to(dtype).eval()


def ids_for(model: DecoderLM, b: int, t: int) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (b, t))


def test_satisfies_the_protocols(tiny: str) -> None:
    model = build(tiny)
    assert isinstance(model, CausalLM)
    assert isinstance(model, CachedCausalLM)
    assert model.config == get_preset(tiny)
    assert model.config.vocab_size == 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_shape_and_dtype(tiny: str, dtype: torch.dtype) -> None:
    model = tiny_model(tiny, dtype)
    logits = model(ids_for(model, 3, 11))
    assert logits.shape == (3, 11, 1000)
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()


def test_causality(tiny: str) -> None:
    model = tiny_model(tiny)
    ids = ids_for(model, 2, 12)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 1000
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_cached_decoding_equals_full_forward(tiny: str) -> None:
    model = tiny_model(tiny)
    ids = ids_for(model, 2, 14)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2, 32)
        assert isinstance(cache, StaticKVCache)
        steps = [model(ids[:, :6], kv_cache=cache)]  # prefill
        for t in range(6, 14):  # one token at a time
            steps.append(model(ids[:, t : t + 1], kv_cache=cache))
    assert cache.seq_len == 14
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_left_padding_equals_unpadded_rows(tiny: str) -> None:
    model = tiny_model(tiny)
    short, long = ids_for(model, 1, 5), ids_for(model, 1, 9)
    pad = 4
    batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :pad] = 0
    positions = position_ids_from_padding(mask)
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, position_ids=positions)
        alone_short, alone_long = model(short), model(long)
    torch.testing.assert_close(padded[0, pad:], alone_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], alone_long[0], rtol=1e-5, atol=1e-5)


def test_left_padding_with_cache(tiny: str) -> None:
    model = tiny_model(tiny)
    short = ids_for(model, 1, 7)
    pad = 3
    batch = torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1)
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, :pad] = 0
    positions = position_ids_from_padding(mask)
    with torch.no_grad():
        cache = model.new_kv_cache(1, 16)
        first = model(
            batch[:, :6], attention_mask=mask[:, :6], position_ids=positions[:, :6], kv_cache=cache
        )
        rest = model(
            batch[:, 6:], attention_mask=mask, position_ids=positions[:, 6:], kv_cache=cache
        )
        alone = model(short)
    torch.testing.assert_close(torch.cat([first, rest], 1)[0, pad:], alone[0], rtol=1e-5, atol=1e-5)


def test_hidden_states(tiny: str) -> None:
    model = tiny_model(tiny)
    ids = ids_for(model, 2, 5)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        plain = model(ids)
    assert isinstance(out, DecoderOutput)
    assert len(out.hidden_states) == model.config.n_layers + 1
    assert all(h.shape == (2, 5, 64) for h in out.hidden_states)
    torch.testing.assert_close(out.logits, plain)
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), plain)
    embedded = model.token_embedding(ids)
    if model.position_embedding is not None:
        embedded = model.position_embedding(embedded)
    torch.testing.assert_close(out.hidden_states[0], embedded)


def test_tied_embeddings_share_storage() -> None:
    model = build("gpt2-tiny")
    assert model.tied
    assert model.lm_head.weight is model.token_embedding.weight
    assert model.lm_head.weight.data_ptr() == model.token_embedding.weight.data_ptr()
    n_unique = sum(p.numel() for p in model.parameters())
    assert n_unique == sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    untied = build("gpt2-tiny", tie_embeddings=False)
    assert not untied.tied
    assert sum(p.numel() for p in untied.parameters()) == n_unique + 1000 * 64


def test_tied_gradients_flow_into_one_tensor() -> None:
    model = build("llama-tiny")
    model(ids_for(model, 2, 4)).sum().backward()
    grad = model.token_embedding.weight.grad
    assert grad is not None
    assert model.lm_head.weight.grad is grad


def test_initialization() -> None:
    model = build("gpt2", n_layers=4, dropout=0.0, vocab_size=2000)
    config = model.config
    fc = model.blocks[0].feed_forward.fc.weight
    proj = model.blocks[0].feed_forward.proj.weight
    assert abs(fc.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / (2 * config.n_layers) ** 0.5) < 0.001
    assert torch.all(model.blocks[0].attention.qkv_proj.bias == 0)
    assert torch.all(model.final_norm.weight == 1)
    llama = build("llama-tiny")
    down = llama.blocks[0].feed_forward.down_proj.weight
    gate = llama.blocks[0].feed_forward.gate_proj.weight
    assert abs(down.std().item() / gate.std().item() - 1.0) < 0.2  # not scaled


def test_reset_parameters_restores_norm_scales() -> None:
    model = build("qwen3-tiny")
    with torch.no_grad():
        model.final_norm.weight.fill_(3.0)
        model.blocks[0].attention.q_norm.weight.fill_(3.0)
    model.reset_parameters()
    assert torch.all(model.final_norm.weight == 1)
    assert torch.all(model.blocks[0].attention.q_norm.weight == 1)


def test_activation_checkpointing_gives_identical_gradients(tiny: str) -> None:
    ids = torch.randint(0, 1000, (2, 9))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = build(tiny)
        model.activation_checkpointing = checkpointing
        assert model.activation_checkpointing is checkpointing
        loss = model(ids).float().square().mean() + model.aux_loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_aux_loss() -> None:
    dense = build("qwen3-tiny")
    dense(ids_for(dense, 2, 4))
    assert dense.aux_loss.item() == 0.0
    moe = build("qwen3-moe-tiny")
    moe(ids_for(moe, 2, 4))
    aux = moe.aux_loss
    assert aux.ndim == 0
    assert aux.item() > 0
    assert aux.requires_grad
    # each layer contributes coef * balance_loss, and balance_loss >= 1 (top_k for balance)
    assert aux.item() >= moe.config.n_layers * moe.config.router_aux_loss_coef * 0.99


def test_dropout_only_in_training() -> None:
    model = build("gpt2-tiny", dropout=0.5)
    ids = ids_for(model, 2, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(ids), model(ids))


def test_meta_device_build_allocates_nothing() -> None:
    with torch.device("meta"):
        model = build("qwen3-moe-tiny")
    assert all(p.is_meta for p in model.parameters())
    assert model.tied is False
    assert model.new_kv_cache(1, 8).device.type == "meta"


def test_bad_inputs() -> None:
    model = tiny_model("llama-tiny")
    with pytest.raises(DataError, match="input_ids"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(DataError, match="input_ids"):
        model(torch.zeros(1, 5))
    with pytest.raises(DataError):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ConfigError, match="context length"):
        model.new_kv_cache(1, 10_000)
    other = tiny_model("gpt2-tiny").new_kv_cache(1, 8)
    big = build("llama-tiny", n_layers=3).new_kv_cache(1, 8)
    with pytest.raises(CompatibilityError, match="layers"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=big)
    with pytest.raises(CompatibilityError):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=other)


def test_new_kv_cache_follows_the_model() -> None:
    model = build("qwen3-tiny").to(torch.bfloat16)
    cache = model.new_kv_cache(3, 20)
    assert cache.dtype == torch.bfloat16
    assert cache.batch_size == 3
    assert cache.max_seq_len == 20
    assert len(cache) == 2
    assert cache.seq_len == 0
    assert model.new_kv_cache(1, 4, dtype=torch.float32).dtype == torch.float32


def test_constructor_checks_parts() -> None:
    config = get_preset("llama-tiny")
    good = build(config)
    with pytest.raises(ConfigError, match="blocks"):
        DecoderLM(
            config=config,
            token_embedding=good.token_embedding,
            position_embedding=None,
            blocks=list(good.blocks)[:1],  # type: ignore[arg-type]
            final_norm=good.final_norm,
            lm_head=good.lm_head,
            tie_embeddings=True,
        )
    with pytest.raises(ConfigError, match="tie_embeddings"):
        DecoderLM(
            config=config,
            token_embedding=good.token_embedding,
            position_embedding=None,
            blocks=list(good.blocks),  # type: ignore[arg-type]
            final_norm=good.final_norm,
            lm_head=nn.Linear(64, 1000, bias=False),
            tie_embeddings=False,
        )
    with pytest.raises(ConfigError, match="token_embedding"):
        DecoderLM(
            config=config,
            token_embedding=TokenEmbedding(vocab_size=10, d_model=64),
            position_embedding=None,
            blocks=list(good.blocks),  # type: ignore[arg-type]
            final_norm=good.final_norm,
            lm_head=nn.Linear(64, 1000, bias=False),
            tie_embeddings=False,
        )


def test_gpt2_learned_positions_limit() -> None:
    model = tiny_model("gpt2-tiny")
    with pytest.raises(DataError):
        model(torch.zeros(1, model.config.context_length + 1, dtype=torch.long))


@given(
    name=st.sampled_from(["gpt2-tiny", "llama-tiny", "qwen3-moe-tiny"]),
    cuts=st.lists(st.integers(1, 11), min_size=1, max_size=4, unique=True),
)
@settings(max_examples=12, deadline=None)
def test_any_chunking_of_cached_decoding_equals_full_forward(name: str, cuts: list[int]) -> None:
    torch.manual_seed(0)
    model = tiny_model(name)
    ids = ids_for(model, 2, 12)
    bounds = [0, *sorted(cuts), 12]
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2, 12)
        chunks = [model(ids[:, a:b], kv_cache=cache) for a, b in itertools.pairwise(bounds)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_and_cache(tiny: str, dtype: torch.dtype) -> None:
    cpu = tiny_model(tiny)
    gpu = build(tiny).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda", dtype)
    ids = ids_for(cpu, 2, 10)
    with torch.no_grad():
        expected = cpu(ids)
        got = gpu(ids.cuda())
        cache = gpu.new_kv_cache(2, 16)
        assert cache.device.type == "cuda"
        steps = [gpu(ids[:, :4].cuda(), kv_cache=cache)]
        steps += [gpu(ids[:, t : t + 1].cuda(), kv_cache=cache) for t in range(4, 10)]
    assert got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.float().cpu(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(torch.cat(steps, 1).float(), got.float(), rtol=tol, atol=tol)


def test_attention_weights_are_causal_distributions(tiny: str) -> None:
    model = build(tiny).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    maps = model.attention_weights(ids)
    assert len(maps) == model.config.n_layers
    for weights in maps:
        assert weights.shape == (2, model.config.n_heads, 9, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, model.config.n_heads, 9))
        future = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
        assert torch.all(weights[..., future] == 0)


def test_attention_weights_of_the_first_layer_match_a_manual_softmax() -> None:
    model = build("llama-tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    block = model.blocks[0]
    x = block.attention_norm(model.token_embedding(ids))  # (1, 6, d_model)
    _, expected = block.attention.forward_with_weights(x)  # type: ignore[operator]
    torch.testing.assert_close(model.attention_weights(ids)[0], expected)


def test_attention_weights_respect_padding() -> None:
    model = build("gpt2-tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = position_ids_from_padding(mask)
    maps = model.attention_weights(ids, attention_mask=mask, position_ids=positions)
    # real queries never attend to the padded keys of row 0
    assert torch.all(maps[0][0, :, 2:, :2] == 0)


def test_attention_weights_need_lego_attention() -> None:
    model = build("gpt2-tiny")

    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor, **_: object) -> torch.Tensor:
            return x

    model.blocks[1].attention = Opaque()
    with pytest.raises(CompatibilityError, match=r"blocks \[1\]"):
        model.attention_weights(torch.zeros(1, 3, dtype=torch.long))


def test_from_config_without_initialization_keeps_the_constructors_values() -> None:
    """initialize=False is for loaders: the values are the modules' own, not N(0, 0.02)."""
    config = get_preset("gpt2-tiny")
    drawn = DecoderLM.from_config(config)
    raw = DecoderLM.from_config(config, initialize=False)
    assert float(drawn.token_embedding.weight.detach().std()) < 0.05
    assert float(raw.token_embedding.weight.detach().std()) > 0.5  # nn.Embedding's N(0, 1)


def test_from_config_takes_prebuilt_positions() -> None:
    from lego.arch.components import build_positions

    config = get_preset("llama-tiny")
    positions = build_positions(config)
    model = DecoderLM.from_config(config, positions=positions)
    assert all(block.attention.rotary is positions.rotary for block in model.blocks)
