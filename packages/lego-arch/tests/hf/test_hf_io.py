"""from_hf / to_hf: round trips, shards, dtypes, lazy reading, and every refusal."""

from __future__ import annotations

import json
import os
import pickle
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lego.arch
from lego.arch import DecoderLM, build, from_hf, read_hf_config, to_hf
from lego.arch.hf import INDEX_NAME, SAFETENSORS_NAME, parse_shard_size, reading
from lego.protocols import CompatibilityError, ConfigError, FormatError

TINY = ("gpt2-tiny", "llama-tiny", "qwen3-tiny", "qwen3-moe-tiny")


def _assert_same(a: DecoderLM, b: DecoderLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("preset", TINY)
def test_round_trip_is_bit_exact(preset: str, tmp_path: Path) -> None:
    model = build(preset)
    to_hf(model, tmp_path / "m")
    back = from_hf(tmp_path / "m")
    _assert_same(model, back)
    assert back.config == model.config
    assert back.tied == model.tied
    assert not back.training
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))


@pytest.mark.parametrize("preset", TINY)
def test_sharded_round_trip(preset: str, tmp_path: Path) -> None:
    model = build(preset)
    out = tmp_path / "sharded"
    to_hf(model, out, max_shard_size="20KB")
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert not (out / SAFETENSORS_NAME).exists()
    assert shards == sorted(p.name for p in out.glob("model-*.safetensors"))
    total = sum(t.numel() * t.element_size() for t in _load_dir(out).values())
    assert index["metadata"]["total_size"] == total
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
    _assert_same(model, from_hf(out))


def test_resaving_removes_stale_weight_files(tmp_path: Path) -> None:
    model = build("llama-tiny")
    to_hf(model, tmp_path, max_shard_size="20KB")
    (tmp_path / "tokenizer.json").write_text("{}")
    to_hf(model, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", SAFETENSORS_NAME, "tokenizer.json"]
    _assert_same(model, from_hf(tmp_path))


def test_new_directory_leaves_no_temporary_files(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path / "a" / "b")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "config.json",
        SAFETENSORS_NAME,
    ]


def test_tied_head_is_written_once(tmp_path: Path) -> None:
    model = build("gpt2-tiny")
    assert model.tied
    to_hf(model, tmp_path)
    names = set(_load_dir(tmp_path))
    assert "lm_head.weight" not in names
    assert "transformer.wte.weight" in names
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True


def test_untied_head_is_written(tmp_path: Path) -> None:
    model = build("llama-tiny", tie_embeddings=False)
    to_hf(model, tmp_path)
    tensors = _load_dir(tmp_path)
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight.detach())
    back = from_hf(tmp_path)
    assert not back.tied
    _assert_same(model, back)


def test_conv1d_weights_load_as_transposed_views(tmp_path: Path) -> None:
    source = build("gpt2-tiny")
    to_hf(source, tmp_path)
    model = from_hf(tmp_path)
    fc = model.get_parameter("blocks.0.feed_forward.fc.weight")
    assert fc.shape == (source.config.d_ff, source.config.d_model)
    assert fc.t().is_contiguous()  # the file's (in, out) layout, strides swapped
    assert not fc.is_contiguous()
    # everything not transposed is contiguous; the outputs are the same as the source's
    transposed = {"qkv_proj.weight", "out_proj.weight", "fc.weight", "proj.weight"}
    for name, param in model.named_parameters():
        if not any(name.endswith(t) for t in transposed):
            assert param.is_contiguous(), name
    ids = torch.randint(0, source.config.vocab_size, (2, 7))
    assert torch.equal(model(ids), source.eval()(ids))


def test_cast_or_moved_parameters_are_contiguous(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    model = from_hf(tmp_path, dtype="bf16")
    assert all(p.is_contiguous() for p in model.parameters())


def test_written_tensors_are_contiguous_hf_layout(tmp_path: Path) -> None:
    model = build("gpt2-tiny")
    to_hf(model, tmp_path)
    tensors = _load_dir(tmp_path)
    d = model.config.d_model
    assert tensors["transformer.h.0.mlp.c_fc.weight"].shape == (d, model.config.d_ff)
    weight = model.get_parameter("blocks.0.feed_forward.fc.weight").detach()
    assert torch.equal(tensors["transformer.h.0.mlp.c_fc.weight"], weight.t())


def test_moe_experts_are_written_per_expert(tmp_path: Path) -> None:
    model = build("qwen3-moe-tiny")
    to_hf(model, tmp_path)
    tensors = _load_dir(tmp_path)
    n = model.config.n_experts
    assert n is not None
    stacked = model.get_parameter("blocks.1.feed_forward.experts.down_proj").detach()
    for e in range(n):
        stored = tensors[f"model.layers.1.mlp.experts.{e}.down_proj.weight"]
        assert torch.equal(stored, stacked[e])
    assert not any(".experts.gate_up_proj" in name for name in tensors)


# -- dtypes ---------------------------------------------------------------------------------


def test_dtype_cast_on_load_and_save(tmp_path: Path) -> None:
    model = build("llama-tiny")
    to_hf(model, tmp_path / "bf16", dtype="bf16")
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    kept = from_hf(tmp_path / "bf16")  # None keeps the stored dtype
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    auto = from_hf(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {torch.bfloat16}
    up = from_hf(tmp_path / "bf16", dtype=torch.float32)
    assert {p.dtype for p in up.parameters()} == {torch.float32}
    expected = model.token_embedding.weight.detach().to(torch.bfloat16).float()
    assert torch.equal(up.token_embedding.weight.detach(), expected)
    half = from_hf(tmp_path / "bf16", dtype="fp16")
    assert {p.dtype for p in half.parameters()} == {torch.float16}


@pytest.mark.parametrize("bad", ["bfloat", "fp33", "int8"])
def test_wrong_dtype_string(tmp_path: Path, bad: str) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    with pytest.raises(ConfigError) as info:
        from_hf(tmp_path, dtype=bad)
    assert info.value.key == "dtype"


def test_wrong_dtype_string_suggests_close_names(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    with pytest.raises(ConfigError, match="bfloat16"):
        from_hf(tmp_path, dtype="bfloat")


# -- errors ---------------------------------------------------------------------------------


def test_every_tensor_problem_is_listed_at_once(tmp_path: Path) -> None:
    to_hf(build("llama-tiny"), tmp_path)
    tensors = load_file(tmp_path / SAFETENSORS_NAME)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    del tensors["model.norm.weight"]
    tensors["model.layers.0.mlp.surprise.weight"] = torch.zeros(2)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(tmp_path / SAFETENSORS_NAME), metadata={"format": "pt"})
    with pytest.raises(CompatibilityError) as info:
        from_hf(tmp_path)
    text = str(info.value)
    assert "2 missing" in text
    assert "1 unexpected" in text
    assert "1 mis-shaped" in text
    for name in (
        "model.layers.0.self_attn.k_proj.weight",
        "model.norm.weight",
        "model.layers.0.mlp.surprise.weight",
        "model.layers.1.mlp.up_proj.weight",
    ):
        assert name in text
    assert "(3, 3)" in text


def test_missing_expert_is_reported(tmp_path: Path) -> None:
    to_hf(build("qwen3-moe-tiny"), tmp_path)
    tensors = load_file(tmp_path / SAFETENSORS_NAME)
    del tensors["model.layers.0.mlp.experts.1.up_proj.weight"]
    save_file(tensors, str(tmp_path / SAFETENSORS_NAME))
    with pytest.raises(CompatibilityError, match=r"experts\.1\.up_proj"):
        from_hf(tmp_path)


class _Exploit:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _write_exploit(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    probe = marker.with_name("probe")  # sanity: the payload really runs when unpickled
    pickle.loads(pickle.dumps(_Exploit(probe)))
    assert probe.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_checkpoints_are_refused_unopened(tmp_path: Path, name: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    marker = tmp_path / "executed"
    _write_exploit(model_dir / name, marker)
    (model_dir / "config.json").write_text(json.dumps(_tiny_gpt2_config()))
    with pytest.raises(CompatibilityError) as info:
        from_hf(model_dir)
    assert "never unpickles" in str(info.value)
    assert info.value.hint is not None
    assert "safe_serialization=True" in info.value.hint
    assert not marker.exists()
    with pytest.raises(CompatibilityError):  # the file itself, too
        from_hf(model_dir / name)
    assert not marker.exists()


def test_pickle_without_config_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    _write_exploit(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(CompatibilityError, match="pickle"):
        from_hf(tmp_path)
    assert not marker.exists()


def _tiny_gpt2_config() -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 100,
        "n_positions": 32,
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 4,
    }


def test_another_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    )
    with pytest.raises(CompatibilityError) as info:
        from_hf(tmp_path)
    text = str(info.value)
    assert "MistralForCausalLM" in text
    for supported in (
        "GPT2LMHeadModel",
        "LlamaForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
    ):
        assert supported in text
    assert info.value.key == "architectures"


def test_model_type_alone_selects_the_architecture(tmp_path: Path) -> None:
    data = _tiny_gpt2_config()
    del data["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_hf_config(tmp_path).family == "gpt2"


def test_missing_directory_and_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        from_hf(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(_tiny_gpt2_config()))
    with pytest.raises(ConfigError, match="no weights"):
        from_hf(tmp_path)
    with pytest.raises(ConfigError, match="directory"):
        from_hf(tmp_path / "config.json")


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CompatibilityError, match=shard.name):
        from_hf(tmp_path)


def test_tied_head_that_differs_is_refused(tmp_path: Path) -> None:
    to_hf(build("llama-tiny"), tmp_path)
    tensors = load_file(tmp_path / SAFETENSORS_NAME)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
    save_file(tensors, str(tmp_path / SAFETENSORS_NAME))
    with pytest.raises(CompatibilityError, match="tie_word_embeddings") as info:
        from_hf(tmp_path)
    assert info.value.tensor == "lm_head.weight"


def test_tied_head_that_is_equal_is_accepted(tmp_path: Path) -> None:
    model = build("llama-tiny")
    to_hf(model, tmp_path)
    tensors = load_file(tmp_path / SAFETENSORS_NAME)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(tmp_path / SAFETENSORS_NAME))
    back = from_hf(tmp_path)
    assert back.tied
    _assert_same(model, back)


def test_base_model_names_and_old_buffers_are_accepted(tmp_path: Path) -> None:
    """The Hub's original gpt2 checkpoint: no ``transformer.`` prefix, ``attn.bias`` kept."""
    model = build("gpt2-tiny")
    to_hf(model, tmp_path)
    tensors = load_file(tmp_path / SAFETENSORS_NAME)
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    for i in range(model.config.n_layers):
        renamed[f"h.{i}.attn.bias"] = torch.ones(1, 1, 4, 4)
        renamed[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(renamed, str(tmp_path / SAFETENSORS_NAME))
    _assert_same(model, from_hf(tmp_path))


def test_custom_family_cannot_be_saved(tmp_path: Path) -> None:
    model = build("llama-tiny", family="custom")
    with pytest.raises(CompatibilityError) as info:
        to_hf(model, tmp_path)
    assert info.value.key == "family"


def test_unexpressible_config_is_refused_before_writing(tmp_path: Path) -> None:
    model = build("llama-tiny", qk_norm=True)
    with pytest.raises(CompatibilityError) as info:
        to_hf(model, tmp_path / "out")
    assert info.value.key == "qk_norm"
    assert not (tmp_path / "out").exists()


def test_to_hf_into_a_file_path(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="directory"):
        to_hf(build("gpt2-tiny"), file)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("10 kb", 10_000),
        ("1.5MB", 1_500_000),
        (123, 123),
        ("77", 77),
    ],
)
def test_parse_shard_size(text: int | str, expected: int) -> None:
    assert parse_shard_size(text) == expected


@pytest.mark.parametrize("bad", ["5 gigabytes", "", "-1GB", 0, "GB"])
def test_parse_shard_size_refuses(bad: int | str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_shard_size(bad)
    assert info.value.key == "max_shard_size"


# -- lazy reading ---------------------------------------------------------------------------


def test_tensors_are_read_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stored tensor read is released (cast into the model) before the next one is read."""
    to_hf(build("llama-tiny"), tmp_path)
    alive: list[weakref.ref[torch.Tensor]] = []
    most_alive = 0
    reads: list[str] = []
    real_get = reading._Reader.get

    def counting_get(self: Any, name: str) -> torch.Tensor:
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        tensor = real_get(self, name)
        alive.append(weakref.ref(tensor))
        reads.append(name)
        return tensor

    monkeypatch.setattr(reading._Reader, "get", counting_get)
    model = from_hf(tmp_path, dtype=torch.bfloat16)  # every stored fp32 tensor is a temporary
    assert len(reads) == len(set(reads)) == len(list(model.parameters()))
    assert most_alive <= 1
    assert all(ref() is None for ref in alive)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_load_file_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("from_hf must not load whole files")

    monkeypatch.setattr("safetensors.torch.load_file", forbidden)
    monkeypatch.setattr("safetensors.torch.load", forbidden)
    from_hf(tmp_path)


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds the tensor's data (Linux), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            return rest[4] if len(rest) >= 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_kept_dtype_parameters_are_views_on_the_file(tmp_path: Path) -> None:
    """Same dtype, CPU, no transform: the parameter is the file's mapped pages, read lazily."""
    model = build("llama-tiny")
    to_hf(model, tmp_path)
    file = str((tmp_path / SAFETENSORS_NAME).resolve())
    loaded = from_hf(tmp_path)
    weight = loaded.get_parameter("blocks.0.attention.q_proj.weight")
    assert _mapped_file(weight) == file
    with torch.no_grad():  # writes stay private (copy-on-write): the file is unchanged
        weight.add_(1.0)
    again = from_hf(tmp_path)
    assert torch.equal(
        again.get_parameter("blocks.0.attention.q_proj.weight"),
        model.get_parameter("blocks.0.attention.q_proj.weight"),
    )
    cast = from_hf(tmp_path, dtype="bf16")
    assert _mapped_file(cast.get_parameter("blocks.0.attention.q_proj.weight")) != file


def test_parameters_are_built_on_meta_and_installed_by_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_hf builds on the meta device and installs with load_state_dict(assign=True)."""
    to_hf(build("qwen3-tiny"), tmp_path)
    seen: list[tuple[set[str], bool]] = []
    real_load = DecoderLM.load_state_dict

    def spy(self: DecoderLM, state: Any, strict: bool = True, assign: bool = False) -> Any:
        seen.append(({p.device.type for p in self.parameters()}, assign))
        return real_load(self, state, strict=strict, assign=assign)

    monkeypatch.setattr(DecoderLM, "load_state_dict", spy)
    model = from_hf(tmp_path)
    assert seen == [({"meta"}, True)]
    probe = torch.zeros(3)  # nothing of torch.nn.init was changed
    torch.nn.init.ones_(probe)
    assert torch.equal(probe, torch.ones(3))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())  # RoPE tables computed
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    assert torch.isfinite(model(ids)).all()


def test_skip_init_is_scoped_and_leaves_torch_unchanged() -> None:
    from lego.arch.loading import SkipInit

    before = torch.nn.init.normal_
    weight = torch.zeros(4, 4)
    with SkipInit():
        torch.nn.init.normal_(weight)
        weight.uniform_()
        assert torch.nn.init.normal_ is before
    assert torch.equal(weight, torch.zeros(4, 4))
    torch.nn.init.normal_(weight)
    assert not torch.equal(weight, torch.zeros(4, 4))


def test_rope_tables_are_computed_not_loaded(tmp_path: Path) -> None:
    model = build("llama-tiny")
    to_hf(model, tmp_path)
    loaded = from_hf(tmp_path)
    for ours, theirs in zip(model.buffers(), loaded.buffers(), strict=True):
        assert torch.equal(ours, theirs)


def test_read_hf_config_accepts_a_file_and_a_directory(tmp_path: Path) -> None:
    model = build("qwen3-moe-tiny")
    to_hf(model, tmp_path)
    assert read_hf_config(tmp_path) == model.config
    assert read_hf_config(tmp_path / "config.json") == model.config
    assert lego.arch.read_hf_config is read_hf_config


def test_from_hf_accepts_a_string_path_and_device(tmp_path: Path) -> None:
    """device= places each tensor as it is read (here: 'cpu' given explicitly as a string)."""
    to_hf(build("gpt2-tiny"), tmp_path)
    model = from_hf(os.fspath(tmp_path), device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_corrupt_safetensors_is_a_format_error(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    data = (tmp_path / SAFETENSORS_NAME).read_bytes()
    (tmp_path / SAFETENSORS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as info:
        from_hf(tmp_path)
    assert info.value.path == str(tmp_path / SAFETENSORS_NAME)


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_unknown_device(tmp_path: Path, device: str) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    with pytest.raises(ConfigError) as info:
        from_hf(tmp_path, device=device)
    assert info.value.key == "device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda(tmp_path: Path) -> None:
    to_hf(build("gpt2-tiny"), tmp_path)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        from_hf(tmp_path, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_onto_cuda_in_bf16(tmp_path: Path) -> None:
    model = build("qwen3-moe-tiny")
    to_hf(model, tmp_path)
    loaded = from_hf(tmp_path, dtype="bf16", device="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, model.config.vocab_size, (2, 5), device="cuda")
    assert loaded(ids).shape == (2, 5, model.config.vocab_size)
