"""Oracle tests: lego.peft's NF4 and QLoRA against bitsandbytes (CPU) and PEFT.

- ``quantize_nf4`` without double quantization gives the packed codes, absmax values and
  dequantized values of ``bitsandbytes.functional.quantize_4bit(quant_type="nf4",
  compress_statistics=False)`` / ``dequantize_4bit`` bit for bit (float32, float16,
  bfloat16; sizes that are not a multiple of the block; every block size);
- with double quantization (``compress_statistics=True``) the 4-bit codes, the offset and
  the quantized absmax state are equal, and our dequantizer, given bitsandbytes' own state,
  reproduces bitsandbytes' ``dequantize_4bit`` exactly;
- a ``bnb.nn.Linear4bit`` state dict loads into ``NF4Linear`` and ours loads into
  ``Linear4bit`` (through ``Params4bit.from_prequantized``, as transformers loads a
  quantized checkpoint), with equal outputs;
- a tiny Llama loaded by transformers with ``BitsAndBytesConfig(load_in_4bit=True)`` and
  the same model through ``lego.arch.from_hf`` + ``quantize_model`` hold the same NF4 state
  dicts layer for layer; QLoRA: an adapter trained by PEFT on the bitsandbytes model loads
  through ``load_adapter`` onto our NF4 model with PEFT's logits (1e-5) and PEFT's LoRA
  gradients.

bitsandbytes' CPU dequantization kernel (``cdequantize_blockwise_cpu_nf4_*``, 0.50) reads
the wrong absmax for rows whose width is a multiple of 16 but not of the block size (16, 32,
48, 80, 96, ...), where it disagrees with bitsandbytes' own portable dequantization (the
``default`` backend, the CUDA kernels' arithmetic): there our values equal that reference
(``test_widths_where_the_bitsandbytes_cpu_kernel_misreads_the_absmax``), and the layer and
model tests use widths the CPU kernel handles (multiples of the block, or of no 16).

bitsandbytes' CPU ``Linear4bit`` takes a fused bfloat16 path (``gemv_4bit``, with its own
rounding, and only for widths of at least one block) in eval mode when the CPU has
AVX512-BF16; the tests switch it off (``support_avx512bf16_for_cpu = False``) so both
sides compute in float32 with the dequantized weight, the path training uses.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (CPU wheel) is not installed")
bnb_functional = pytest.importorskip("bitsandbytes.functional")

import peft  # noqa: E402 - after the skip
from tiny_hf import VOCAB, tiny_llama  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from lego.arch import from_hf  # noqa: E402
from lego.peft import (  # noqa: E402
    NF4Linear,
    NF4Tensor,
    load_adapter,
    quantize_model,
    quantize_nf4,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(64, 128), (33, 70), (3, 5), (1, 4097), (256, 130)]


def _weight(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype)


def _bnb_quantize(
    weight: torch.Tensor, block_size: int, double_quant: bool
) -> tuple[torch.Tensor, object]:
    packed, state = bnb_functional.quantize_4bit(
        weight, blocksize=block_size, quant_type="nf4", compress_statistics=double_quant
    )
    return packed, state


def _bnb_dequantize(packed: torch.Tensor, state: object, shape: torch.Size) -> torch.Tensor:
    # bitsandbytes' CPU kernel returns a 1-D weight as (1, n): the values are what count
    return bnb_functional.dequantize_4bit(packed, state).reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_codes_absmax_and_values_equal_bitsandbytes(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    weight = _weight(shape, dtype)
    packed, state = _bnb_quantize(weight, 64, double_quant=False)
    ours = quantize_nf4(weight, block_size=64, double_quant=False)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)  # type: ignore[attr-defined]
    assert torch.equal(ours.dequantize(), _bnb_dequantize(packed, state, weight.shape))


@pytest.mark.parametrize("block_size", [32, 128, 256, 1024, 4096])
def test_every_block_size_equals_bitsandbytes(block_size: int) -> None:
    weight = _weight((48, 200), torch.float32, seed=block_size)
    packed, state = _bnb_quantize(weight, block_size, double_quant=False)
    ours = quantize_nf4(weight, block_size=block_size, double_quant=False)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)  # type: ignore[attr-defined]
    assert torch.equal(ours.dequantize(), _bnb_dequantize(packed, state, weight.shape))


def test_awkward_values_equal_bitsandbytes() -> None:
    """Zero blocks, a zero tensor, tiny and huge magnitudes, values on the midpoints."""
    torch.manual_seed(0)
    code = torch.tensor(_bnb_code())
    midpoints = ((code[:-1] + code[1:]) / 2).repeat(5)[:64]
    cases = [
        torch.zeros(4, 64),
        torch.cat([torch.zeros(64), torch.randn(64)]),
        torch.full((2, 64), 1e-39),
        torch.randn(2, 64) * 1e30,
        torch.randn(3000) * torch.logspace(-20, 20, 3000),
        torch.cat([midpoints, torch.ones(1)]),
        torch.tensor([3.0]),
    ]
    for weight in cases:
        for double_quant in (False, True):
            packed, state = _bnb_quantize(weight, 64, double_quant)
            ours = quantize_nf4(weight, 64, double_quant)
            assert torch.equal(ours.packed, packed)
            restored = _bnb_dequantize(packed, state, weight.shape)
            assert torch.equal(ours.dequantize(), restored)


def _bnb_code() -> list[float]:
    """bitsandbytes' NF4 codebook, as it hands it out."""
    code: list[float] = bnb_functional.get_4bit_type("nf4", device="cpu").tolist()
    return code


def test_the_codebook_and_dynamic_map_are_bitsandbytes() -> None:
    from lego.peft.nf4 import dynamic_map, nf4_code

    assert torch.equal(nf4_code(), bnb_functional.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_map(), bnb_functional.create_dynamic_map(signed=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(64, 128), (33, 70), (512, 300), (7,)], ids=str)
def test_double_quantization_equals_bitsandbytes(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    weight = _weight(shape, dtype, seed=1)
    packed, state = _bnb_quantize(weight, 64, double_quant=True)
    ours = quantize_nf4(weight, block_size=64, double_quant=True)
    assert torch.equal(ours.packed, packed)  # the 4-bit codes
    assert ours.offset is not None
    assert torch.equal(ours.offset, state.offset)  # type: ignore[attr-defined]
    assert torch.equal(ours.absmax, state.absmax)  # type: ignore[attr-defined]
    assert torch.equal(ours.nested_absmax, state.state2.absmax)  # type: ignore[attr-defined]
    assert torch.equal(ours.nested_code, state.state2.code)  # type: ignore[attr-defined]
    expected = _bnb_dequantize(packed, state, weight.shape)
    assert torch.equal(ours.dequantize(), expected)
    # our dequantizer on bitsandbytes' own state (its packed state dict)
    tensors = {"w": packed}
    tensors.update({f"w.{k}": v for k, v in state.as_dict(packed=True).items()})  # type: ignore[attr-defined]
    theirs = NF4Tensor.from_state_dict(tensors, "w")
    assert torch.equal(theirs.dequantize(), expected)


@pytest.mark.parametrize("width", [16, 32, 48, 96, 144])
def test_widths_where_the_bitsandbytes_cpu_kernel_misreads_the_absmax(width: int) -> None:
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    weight = _weight((5, width), torch.float32, seed=width)
    packed, state = _bnb_quantize(weight, 64, double_quant=False)
    ours = quantize_nf4(weight, block_size=64, double_quant=False)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)  # type: ignore[attr-defined]
    code = bnb_functional.get_4bit_type("nf4", device="cpu")
    absmax = state.absmax  # type: ignore[attr-defined]
    kernel = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
    reference = kernel(packed.reshape(-1), absmax, code, 64, weight.shape, torch.float32)
    assert torch.equal(ours.dequantize(), reference)


# -- the layer's state dict, both ways -----------------------------------------------------------


def _linear4bit(in_features: int, out_features: int, double_quant: bool) -> nn.Module:
    layer = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=True,
        compute_dtype=torch.float32,
        compress_statistics=double_quant,
        quant_type="nf4",
    )
    layer.support_avx512bf16_for_cpu = False  # the float32 path (see the module docstring)
    return layer


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("in_features", "out_features"), [(128, 48), (40, 20), (200, 64)])
def test_linear4bit_state_dict_loads_into_nf4linear_and_back(
    in_features: int, out_features: int, double_quant: bool
) -> None:
    torch.manual_seed(in_features)
    dense = nn.Linear(in_features, out_features)
    theirs = _linear4bit(in_features, out_features, double_quant)
    theirs.load_state_dict(dense.state_dict())
    theirs = theirs.to("cpu")  # bitsandbytes quantizes on the move to a device
    x = torch.randn(5, in_features)
    with torch.no_grad():
        expected = theirs(x)

    ours = NF4Linear.from_linear(nn.Linear(in_features, out_features))
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours(x), expected)
    mine = NF4Linear.from_linear(dense, double_quant=double_quant).state_dict()
    bnb_state = theirs.state_dict()
    assert list(mine) == list(bnb_state)  # the same keys, in the same order
    for key, value in bnb_state.items():
        assert torch.equal(mine[key], value), key

    # ours -> bitsandbytes, the way transformers loads a pre-quantized checkpoint
    other = _linear4bit(in_features, out_features, double_quant)
    stats = {k.removeprefix("weight."): v for k, v in mine.items() if k.startswith("weight.")}
    other.weight = bnb.nn.Params4bit.from_prequantized(
        data=mine["weight"], quantized_stats=stats, requires_grad=False, device="cpu"
    )
    other.bias = nn.Parameter(mine["bias"], requires_grad=False)
    with torch.no_grad():
        assert torch.equal(other(x), expected)


# -- a whole model: transformers + bitsandbytes, PEFT's QLoRA ------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("llama-base")
    # widths that are multiples of the block (see the module docstring)
    tiny_llama(
        bos_token_id=0, eos_token_id=0, hidden_size=64, intermediate_size=128
    ).save_pretrained(directory)
    return directory


def _bnb_model(directory: Path) -> nn.Module:
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, quantization_config=config, device_map="cpu", dtype=torch.float32
            )
        except (ImportError, RuntimeError, ValueError) as exc:  # pragma: no cover
            pytest.skip(f"transformers cannot load a 4-bit model on this CPU: {exc}")
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


def _linear4bit_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            yield name, module


def test_quantized_model_state_equals_transformers_bitsandbytes(llama_dir: Path) -> None:
    theirs = _bnb_model(llama_dir)
    ours = quantize_model(from_hf(llama_dir))
    layers = dict(_linear4bit_layers(theirs))
    assert "lm_head" not in layers  # transformers leaves the head in full precision; so do we
    assert not isinstance(ours.get_submodule("lm_head"), NF4Linear)
    assert len(layers) == sum(isinstance(m, NF4Linear) for m in ours.modules()) == 14
    names = {
        "self_attn.q_proj": "attention.q_proj",
        "self_attn.k_proj": "attention.k_proj",
        "self_attn.v_proj": "attention.v_proj",
        "self_attn.o_proj": "attention.out_proj",
        "mlp.gate_proj": "feed_forward.gate_proj",
        "mlp.up_proj": "feed_forward.up_proj",
        "mlp.down_proj": "feed_forward.down_proj",
    }
    for name, layer in layers.items():
        _, _, index, *rest = name.split(".")
        path = f"blocks.{index}.{names['.'.join(rest)]}"
        mine = ours.get_submodule(path)
        assert isinstance(mine, NF4Linear), path
        theirs_state = layer.state_dict()
        mine_state = mine.state_dict()
        assert list(mine_state) == list(theirs_state), name
        for key, value in theirs_state.items():
            assert torch.equal(mine_state[key], value), f"{name}.{key}"
        info = json.loads(bytes(theirs_state["weight.quant_state.bitsandbytes__nf4"].tolist()))
        assert info["nested_blocksize"] == 256


def _ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (3, 12), generator=torch.Generator().manual_seed(3))


def test_peft_qlora_adapter_gives_peft_logits_and_gradients_on_our_nf4_model(
    llama_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(5)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    theirs = peft.get_peft_model(_bnb_model(llama_dir), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path / "adapter")
    ours = load_adapter(quantize_model(from_hf(llama_dir)), tmp_path / "adapter")
    assert all(isinstance(layer.base_layer, NF4Linear) for layer in ours.lora_layers.values())
    assert len(ours.lora_layers) == 14

    ids = _ids()
    expected = theirs(input_ids=ids).logits
    got = ours(ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    expected.square().mean().backward()
    got.square().mean().backward()
    mine = ours.adapter_parameters()
    compared = 0
    for name, parameter in theirs.named_parameters():
        if "lora_" not in name:
            continue
        key = name.replace(".default", "")
        assert parameter.grad is not None, key
        assert mine[key].grad is not None, key
        torch.testing.assert_close(mine[key].grad, parameter.grad, rtol=1e-5, atol=1e-6)
        compared += 1
    assert compared == 28


def test_our_merge_keeps_precision_where_requantizing_loses_it(llama_dir: Path) -> None:
    """The merged model (default) matches the adapted model; a re-quantized one does not."""
    from lego.peft import LoraConfig, RequantizationWarning, apply_lora

    torch.manual_seed(9)
    adapted = apply_lora(
        quantize_model(from_hf(llama_dir)),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    ids = _ids()
    with torch.no_grad():
        out = adapted(ids)
        requantized_source = quantize_model(from_hf(llama_dir))
        twin = apply_lora(
            requantized_source,
            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        )
        twin.load_adapter_state_dict(adapted.adapter_state_dict())
        merged = adapted.merge_and_unload()
        with pytest.warns(RequantizationWarning):
            requantized = twin.merge_and_unload(requantize=True)
        exact = (merged(ids) - out).abs().max()
        lossy = (requantized(ids) - out).abs().max()
    assert exact < 1e-5
    assert lossy > 10 * exact
