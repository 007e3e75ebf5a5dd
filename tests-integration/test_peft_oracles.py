"""Oracle tests: lego.peft's LoRA / DoRA and PEFT's adapter format against PEFT itself.

Tiny random transformers ``GPT2LMHeadModel`` (tied head, ``Conv1D`` projections),
``LlamaForCausalLM`` (grouped-query attention) and ``Qwen3ForCausalLM`` (QK-norm, untied
head) are saved with ``save_pretrained`` and loaded through ``lego.arch.from_hf``. For each
adapter variant (LoRA, rsLoRA with rank / alpha patterns, DoRA, embedding LoRA, embedding
DoRA, modules_to_save with trained biases):

- an adapter made by ``peft.get_peft_model(..., init_lora_weights=False)`` and saved by PEFT
  loads through ``load_adapter`` and gives PEFT's logits (fp32, 1e-5), with a left-padded
  batch too, and its tensors come back under the same keys, bit for bit;
- an adapter made by ``apply_lora`` and written by ``save_adapter`` loads in
  ``peft.PeftModel.from_pretrained`` with the same logits and the same key set;
- the gradients of every adapter tensor equal PEFT's (1e-5);
- ``merge()`` then ``unmerge()`` gives back every tensor of the model bit for bit (PEFT's
  subtraction drifts), and the merged logits equal the unmerged ones;
- ``disabled()`` equals the base model exactly, merged or not;
- ``merge_and_unload()`` gives a plain model that ``lego.arch.to_hf`` writes and
  transformers loads with the adapted model's logits (and PEFT's merged logits);
- greedy KV-cached generation (``lego.generate.generate``) on the adapted model equals
  transformers' ``generate`` on PEFT's model, token for token;
- bad adapters (another architecture, another base shape, unsupported PEFT fields) are
  ``CompatibilityError``s naming what does not fit.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tiny_hf import VOCAB, tiny_gpt2, tiny_llama, tiny_qwen3
from transformers import AutoModelForCausalLM, PreTrainedModel

from lego.arch import DecoderLM, from_hf, to_hf
from lego.generate import generate
from lego.peft import LoraConfig, LoraModel, apply_lora, load_adapter
from lego.protocols import CachedCausalLM, CausalLM, CompatibilityError, ConfigError

TOL = {"rtol": 1e-5, "atol": 1e-5}

# PEFT and transformers warn about their own settings (tied weights, deprecations)
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FAMILIES: dict[str, Callable[[], PreTrainedModel]] = {
    "gpt2": lambda: tiny_gpt2(bos_token_id=0, eos_token_id=0),
    "llama": lambda: tiny_llama(bos_token_id=0, eos_token_id=0),  # 4 query heads, 2 kv heads
    "qwen3": lambda: tiny_qwen3(bos_token_id=0, eos_token_id=0),
}

# transformers' module names per family: attention projections, MLP, embedding, final norm
NAMES = {
    "gpt2": {"attn": ["c_attn", "c_proj"], "mlp": ["c_fc"], "emb": "wte", "norm": "ln_f"},
    "llama": {
        "attn": ["q_proj", "v_proj"],
        "mlp": ["up_proj"],
        "emb": "embed_tokens",
        "norm": "norm",
    },
    "qwen3": {
        "attn": ["q_proj", "k_proj"],
        "mlp": ["down_proj"],
        "emb": "embed_tokens",
        "norm": "norm",
    },
}

VARIANTS = ["lora", "rslora", "dora", "embedding", "embedding_dora", "modules_to_save"]


def _settings(family: str, variant: str) -> dict[str, Any]:
    """The PEFT ``LoraConfig`` arguments of one variant (transformers' module names)."""
    names = NAMES[family]
    attn, mlp = names["attn"], names["mlp"]
    if variant == "lora":
        return {"target_modules": attn}
    if variant == "rslora":
        return {
            "target_modules": "all-linear",
            "use_rslora": True,
            "rank_pattern": {attn[0]: 2},
            "alpha_pattern": {mlp[0]: 3},
        }
    if variant == "dora":
        return {"target_modules": [*attn, *mlp], "use_dora": True}
    if variant == "embedding":
        return {"target_modules": [names["emb"], attn[0]]}
    if variant == "embedding_dora":
        return {"target_modules": [names["emb"], attn[0]], "use_dora": True}
    assert variant == "modules_to_save"
    saved = [names["norm"]] if family == "gpt2" else [names["norm"], "lm_head"]
    return {"target_modules": attn, "modules_to_save": saved, "bias": "lora_only"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def base(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """A tiny random transformers model saved as a directory: (family, directory)."""
    family: str = request.param
    torch.manual_seed(sorted(FAMILIES).index(family))
    directory = tmp_path_factory.mktemp(f"{family}-base")
    FAMILIES[family]().save_pretrained(directory)
    return family, directory


def _hf(directory: Path) -> PreTrainedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(directory).eval()


def _peft_model(directory: Path, family: str, variant: str, seed: int = 5) -> peft.PeftModel:
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        **_settings(family, variant),
    )
    model = peft.get_peft_model(_hf(directory), config)
    if variant == "modules_to_save":
        _perturb(model)
    return model.eval()


def _perturb(model: torch.nn.Module) -> None:
    """Give the trainable non-LoRA tensors (modules to save, biases) values of their own."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_" not in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def _ids(batch: int = 3, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(1, VOCAB, (batch, length), generator=generator)


def _left_padding(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0, 3 and 5 pad tokens on the left of the rows, and positions that skip them."""
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 3, 5][: ids.shape[0]]):
        mask[row, :pad] = 0
    return mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _peft_logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def _logits(
    model: Callable[..., torch.Tensor], ids: torch.Tensor, **kwargs: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs)


def _peft_adapter(
    tmp_path: Path, directory: Path, family: str, variant: str
) -> tuple[peft.PeftModel, Path]:
    model = _peft_model(directory, family, variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(tmp_path / "peft-adapter")
    return model, tmp_path / "peft-adapter"


# -- PEFT -> lego.peft ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_adapter_loads_with_peft_logits(
    base: tuple[str, Path], variant: str, tmp_path: Path
) -> None:
    family, directory = base
    theirs, adapter = _peft_adapter(tmp_path, directory, family, variant)
    ours = load_adapter(from_hf(directory), adapter).eval()
    assert isinstance(ours, CachedCausalLM)

    ids = _ids()
    expected = _peft_logits(theirs, ids)
    torch.testing.assert_close(_logits(ours, ids), expected, **TOL)
    with ours.disabled():  # the adapter really changes the output
        assert not torch.allclose(_logits(ours, ids), expected, atol=1e-3)

    mask, positions = _left_padding(ids)
    expected = _peft_logits(theirs, ids, attention_mask=mask, position_ids=positions)
    got = _logits(ours, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], **TOL)

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    mine = ours.adapter_state_dict()
    assert sorted(mine) == sorted(saved)
    for key, tensor in saved.items():
        assert torch.equal(mine[key], tensor), key


# -- lego.peft -> PEFT ---------------------------------------------------------------------------


def _lego_adapter(directory: Path, family: str, variant: str, **overrides: Any) -> LoraModel:
    settings = {**_settings(family, variant), **overrides}
    torch.manual_seed(7)
    adapted = apply_lora(
        from_hf(directory),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **settings),
        hf_names=True,
    )
    if variant == "modules_to_save":
        _perturb(adapted)
    return adapted.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_our_adapter_loads_in_peft(base: tuple[str, Path], variant: str, tmp_path: Path) -> None:
    family, directory = base
    ours = _lego_adapter(directory, family, variant)
    ours.save_adapter(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(_hf(directory), tmp_path / "ours").eval()

    ids = _ids()
    torch.testing.assert_close(_logits(ours, ids), _peft_logits(theirs, ids), **TOL)
    mask, positions = _left_padding(ids)
    got = _logits(ours, ids, attention_mask=mask, position_ids=positions)
    expected = _peft_logits(theirs, ids, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], **TOL)

    written = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = get_peft_model_state_dict(theirs)
    assert sorted(loaded) == sorted(written)  # the same key set, every tensor loaded
    for key, tensor in written.items():
        assert torch.equal(loaded[key], tensor), key


def test_written_config_is_minimal_and_names_transformers_modules(
    base: tuple[str, Path], tmp_path: Path
) -> None:
    family, directory = base
    ours = _lego_adapter(directory, family, "rslora")
    ours.save_adapter(tmp_path / "ours", base_model_name_or_path=str(directory))
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(directory)
    assert config["use_rslora"] is True
    assert config["fan_in_fan_out"] is (family == "gpt2")
    assert "use_dora" not in config  # only what is used, so older PEFT versions read it
    expected = {"gpt2": ["c_attn", "c_fc", "c_proj"]}.get(
        family, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    )
    assert config["target_modules"] == expected


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lora", "dora", "embedding_dora", "modules_to_save"])
def test_gradients_equal_peft(base: tuple[str, Path], variant: str, tmp_path: Path) -> None:
    family, directory = base
    theirs, adapter = _peft_adapter(tmp_path, directory, family, variant)
    ours = load_adapter(from_hf(directory), adapter)
    theirs.train()
    ours.train()
    ids = _ids()
    mask, positions = _left_padding(ids)
    # next-token targets, only where the input position is a real token too (a padded
    # position's logits are not defined the same way by both libraries)
    targets = ids[:, 1:].masked_fill(mask[:, :-1] == 0, -100)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100
        )

    loss(theirs(input_ids=ids, attention_mask=mask, position_ids=positions).logits).backward()
    loss(ours(ids, attention_mask=mask, position_ids=positions)).backward()

    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = get_peft_model_state_dict(theirs, state_dict=grads)  # type: ignore[arg-type]
    mine = ours.adapter_parameters()
    assert sorted(mine) == sorted(expected)
    assert any("lora_magnitude_vector" in key for key in mine) == ("dora" in variant)
    for key, parameter in mine.items():
        assert parameter.grad is not None, key
        grad = parameter.grad.T if key.endswith("c_attn.weight") else parameter.grad
        torch.testing.assert_close(grad, expected[key], **TOL, msg=key)
    trainable = {id(p) for p in ours.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in mine.values()}  # nothing else trains


# -- merge, unmerge, disable, unload -------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "embedding_dora", "modules_to_save"])
def test_merge_then_unmerge_restores_every_tensor_bit_exactly(
    base: tuple[str, Path], variant: str
) -> None:
    family, directory = base
    ours = _lego_adapter(directory, family, variant)
    before = {name: t.clone() for name, t in ours.state_dict().items()}
    ids = _ids()
    unmerged = _logits(ours, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tied GPT-2 head + embedding adapter: warned
        ours.merge()
    assert ours.merged
    if not (family == "gpt2" and "embedding" in variant):  # PEFT's tied-head caveat
        torch.testing.assert_close(_logits(ours, ids), unmerged, **TOL)
    changed = [n for n, t in ours.state_dict().items() if not torch.equal(t, before[n])]
    assert changed  # the base weights really hold the merged values
    ours.unmerge()
    assert not ours.merged
    after = ours.state_dict()
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert torch.equal(_logits(ours, ids), unmerged)


def test_peft_unmerge_drifts_where_ours_does_not(base: tuple[str, Path]) -> None:
    """The reason for keeping the original weights: PEFT subtracts the delta again."""
    family, directory = base
    theirs = _peft_model(directory, family, "dora")
    before = {n: t.clone() for n, t in theirs.state_dict().items()}
    theirs.merge_adapter()
    theirs.unmerge_adapter()
    drift = max((t - before[n]).abs().max().item() for n, t in theirs.state_dict().items())
    ours = _lego_adapter(directory, family, "dora")
    mine = {n: t.clone() for n, t in ours.state_dict().items()}
    ours.merge()
    ours.unmerge()
    assert all(torch.equal(t, mine[n]) for n, t in ours.state_dict().items())
    assert drift > 0.0  # ~1e-8: the bit-exact restore above is not a coincidence


@pytest.mark.parametrize("variant", ["dora", "embedding", "modules_to_save"])
def test_disabled_is_the_base_model_exactly(base: tuple[str, Path], variant: str) -> None:
    family, directory = base
    plain = from_hf(directory).eval()
    # trained biases (bias="lora_only") are the base's own, in PEFT as here: leave them out
    ours = _lego_adapter(directory, family, variant, bias="none")
    ids = _ids()
    mask, positions = _left_padding(ids)
    expected = _logits(plain, ids, attention_mask=mask, position_ids=positions)
    with ours.disabled():
        assert torch.equal(
            _logits(ours, ids, attention_mask=mask, position_ids=positions), expected
        )
    assert not torch.allclose(
        _logits(ours, ids, attention_mask=mask, position_ids=positions), expected
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.merge()
    with ours.disabled():  # unmerged inside, bit-exactly
        assert torch.equal(
            _logits(ours, ids, attention_mask=mask, position_ids=positions), expected
        )
    assert ours.merged


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "embedding_dora", "modules_to_save"])
def test_merge_and_unload_writes_a_model_transformers_loads(
    base: tuple[str, Path], variant: str, tmp_path: Path
) -> None:
    family, directory = base
    theirs, adapter = _peft_adapter(tmp_path, directory, family, variant)
    ours = load_adapter(from_hf(directory), adapter).eval()
    ids = _ids()
    adapted = _logits(ours, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ours.merge_and_unload()
        peft_merged = theirs.merge_and_unload().eval()
    assert isinstance(plain, DecoderLM)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    to_hf(plain, tmp_path / "merged")
    reloaded = _hf(tmp_path / "merged")
    expected = _peft_logits(reloaded, ids)
    torch.testing.assert_close(_logits(plain, ids), expected, **TOL)
    torch.testing.assert_close(_peft_logits(peft_merged, ids), expected, **TOL)
    if not (family == "gpt2" and "embedding" in variant):  # a tied head changes with the table
        torch.testing.assert_close(expected, adapted, **TOL)


# -- generation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lora", "embedding_dora"])
def test_kv_cached_generation_equals_peft(
    base: tuple[str, Path], variant: str, tmp_path: Path
) -> None:
    family, directory = base
    theirs, adapter = _peft_adapter(tmp_path, directory, family, variant)
    ours = load_adapter(from_hf(directory), adapter).eval()
    assert isinstance(ours, CausalLM)
    assert isinstance(ours, CachedCausalLM)
    ids = _ids(batch=3, length=6)
    mask, _ = _left_padding(ids)
    with torch.no_grad():
        expected = theirs.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    settings = {"max_new_tokens": 8, "eos_token_id": 0, "pad_token_id": 0}
    cached = generate(ours, ids, attention_mask=mask, **settings)
    uncached = generate(ours, ids, attention_mask=mask, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : expected.shape[1]], expected)


# -- bad adapters --------------------------------------------------------------------------------


def test_adapter_of_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    FAMILIES["gpt2"]().save_pretrained(tmp_path / "gpt2")
    FAMILIES["llama"]().save_pretrained(tmp_path / "llama")
    _, adapter = _peft_adapter(tmp_path, tmp_path / "llama", "llama", "lora")
    with pytest.raises(CompatibilityError, match=r"'(q|v)_proj' matches no module") as info:
        load_adapter(from_hf(tmp_path / "gpt2"), adapter)
    assert "c_attn" in str(info.value)  # what could have matched


def test_adapter_of_another_base_shape_names_the_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_llama(hidden_size=64).save_pretrained(tmp_path / "wide")
    FAMILIES["llama"]().save_pretrained(tmp_path / "narrow")
    _, adapter = _peft_adapter(tmp_path, tmp_path / "wide", "llama", "lora")
    model = from_hf(tmp_path / "narrow")
    with pytest.raises(CompatibilityError, match="of another shape") as info:
        load_adapter(model, adapter)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in str(info.value)
    assert not any("lora" in name for name, _ in model.named_parameters())  # left as it was


def test_unsupported_peft_fields_are_named(base: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = base
    _, adapter = _peft_adapter(tmp_path, directory, family, "lora")
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(layers_to_transform=[0], lora_bias=True)
    config_file.write_text(json.dumps(config))
    with pytest.raises(CompatibilityError, match=r"layers_to_transform=\[0\], lora_bias=True"):
        load_adapter(from_hf(directory), adapter)


def test_unknown_tensors_are_named(base: tuple[str, Path], tmp_path: Path) -> None:
    family, directory = base
    _, adapter = _peft_adapter(tmp_path, directory, family, "lora")
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["base_model.model.extra.lora_A.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(weights))
    with pytest.raises(CompatibilityError, match=re.escape("base_model.model.extra.lora_A.weight")):
        load_adapter(from_hf(directory), adapter)


def test_merge_twice_and_unmerge_unmerged_are_errors(base: tuple[str, Path]) -> None:
    family, directory = base
    ours = _lego_adapter(directory, family, "lora")
    with pytest.raises(ConfigError, match="not merged"):
        ours.unmerge()
    ours.merge()
    with pytest.raises(ConfigError, match="already merged"):
        ours.merge()
    copy.deepcopy(ours).unmerge()  # a deep copy keeps the original weights too
