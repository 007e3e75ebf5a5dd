"""The DPO trainer: pairs, the three references, the cache, exact resume, learning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lego.align import (
    DPOCollator,
    DPOConfig,
    DPOObjective,
    DPOTrainer,
    ReferenceCache,
    build_preference_batch,
    dpo_loss,
    dpo_pairs,
    precompute_reference_logps,
    reference_fingerprint,
    sequence_logprobs,
)
from lego.data import PreferenceDataset
from lego.peft import LoraConfig, LoraModel, apply_lora
from lego.protocols import CompatibilityError, ConfigError, DataError
from lego.train import TrainConfig


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """The chosen answer is made of a's, the rejected one of b's."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        j = int(torch.randint(1, 4, (1,), generator=gen))
        prompt = "pick" + "!" * int(torch.randint(0, 3, (1,), generator=gen))
        rows.append({"prompt": prompt, "chosen": "a" * k, "rejected": "b" * j})
    return rows


def train_config(tmp_path: Path, name: str = "run", **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out_dir": str(tmp_path / name),
        "max_steps": 4,
        "progress": "none",
        "peak_flops": 1e12,
        "optim": {"lr": 3e-2, "min_lr": 3e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def dpo(
    tmp_path: Path, chars: Any, model: nn.Module, *, train: dict[str, Any] | None = None, **kw: Any
) -> DPOTrainer:
    rows = kw.pop("rows", None) or preference_rows(16)
    eval_rows = kw.pop("eval_rows", None)
    reference_model = kw.pop("reference_model", None)
    config = DPOConfig(**{"batch_size": 4, "max_length": 48, "beta": 0.5, **kw})
    return DPOTrainer(
        model=model,
        tokenizer=chars,
        train_data=rows,
        eval_data=eval_rows,
        config=config,
        train=train_config(tmp_path, **(train or {})),
        reference_model=reference_model,
    )


# -- data -------------------------------------------------------------------------------------


def test_pairs_split_prompt_and_responses(chars: Any) -> None:
    rows = [{"prompt": "hi", "chosen": "yes", "rejected": "no"}]
    data = PreferenceDataset(rows, chars, template="chatml")
    (pair,), counts = dpo_pairs(data, max_length=None)
    assert (
        chars.decode(pair["prompt_ids"])
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chars.decode(pair["chosen_ids"]) == "yes<|im_end|>"  # ends at the end-of-turn token
    assert chars.decode(pair["rejected_ids"]) == "no<|im_end|>"
    assert counts == {"pairs": 1, "truncated": 0, "dropped": 0, "identical": 0}


def test_pairs_are_fitted_and_counted(chars: Any) -> None:
    rows = [
        {"prompt": "q" * 30, "chosen": "yes", "rejected": "no"},
        {"prompt": "same", "chosen": "x", "rejected": "x"},
        {"prompt": "q", "chosen": "z" * 40, "rejected": "no"},
        {"prompt": "fine", "chosen": "a", "rejected": "b"},
    ]
    data = PreferenceDataset(rows, chars, template="chatml")
    pairs, counts = dpo_pairs(data, max_length=32, path="p.jsonl")
    assert counts == {"pairs": 2, "truncated": 1, "dropped": 1, "identical": 1}
    assert [p["index"] for p in pairs] == [0, 1]
    cut = pairs[0]
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == 32
    assert chars.decode(cut["chosen_ids"]) == "yes<|im_end|>"  # never the response
    with pytest.raises(DataError, match="identical") as info:
        dpo_pairs(data, max_length=32, identical="error", path="p.jsonl")
    assert (info.value.line, info.value.path) == (2, "p.jsonl")
    with pytest.raises(DataError, match="does not fit max_length=32") as info:
        dpo_pairs(data, max_length=32, on_overflow="error")
    assert info.value.line == 3


def test_collator_layout_and_cached_reference(chars: Any) -> None:
    data = PreferenceDataset(preference_rows(3), chars, template="chatml")
    pairs, _ = dpo_pairs(data, max_length=None)
    reference = (torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0]))
    batch = DPOCollator(pad_id=3, reference=reference)([pairs[2], pairs[0]])
    expected = build_preference_batch([pairs[2], pairs[0]], pad_id=3, eos_id=None)
    assert torch.equal(batch["input_ids"], expected.input_ids)
    assert torch.equal(batch["completion_mask"], expected.completion_mask)
    assert batch["index"].tolist() == [2, 0]
    assert batch["ref_chosen"].tolist() == [-3.0, -1.0]
    assert batch["ref_rejected"].tolist() == [-6.0, -4.0]


# -- the objective ----------------------------------------------------------------------------


def batch_for(chars: Any, n: int = 4) -> dict[str, torch.Tensor]:
    data = PreferenceDataset(preference_rows(n), chars, template="chatml")
    pairs, _ = dpo_pairs(data, max_length=None)
    return DPOCollator(pad_id=3)(pairs)


def test_objective_equals_dpo_loss_with_a_reference_model(chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    policy, reference = kit.WideLM(), kit.WideLM()
    batch = batch_for(chars)
    objective = DPOObjective(loss_type="ipo", beta=0.3, reference=reference)
    assert objective.units(batch) == 4
    out = objective(policy, batch)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    pc, pr = sequence_logprobs(policy, *args, position_ids=batch["position_ids"]).chunk()
    rc, rr = sequence_logprobs(reference, *args, position_ids=batch["position_ids"]).chunk()
    expected = dpo_loss(
        pc.sum,
        pr.sum,
        rc.sum.detach(),
        rr.sum.detach(),
        loss_type="ipo",
        beta=0.3,
        chosen_lengths=pc.count,
        rejected_lengths=pr.count,
    )
    torch.testing.assert_close(out.loss_sum / 4, expected.loss)
    torch.testing.assert_close(
        out.metrics["rewards/margins"] / 4, expected.metrics["rewards/margins"]
    )
    (grad,) = torch.autograd.grad(out.loss_sum, [policy.mix.weight])
    (expected_grad,) = torch.autograd.grad(expected.loss * 4, [policy.mix.weight])
    torch.testing.assert_close(grad, expected_grad)
    assert all(p.grad is None for p in reference.parameters())


def test_the_disabled_adapter_is_the_reference(chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    base = kit.WideLM()
    copy_of_base = kit.WideLM()
    copy_of_base.load_state_dict(base.state_dict())
    adapted = apply_lora(base, LoraConfig(target_modules=("mix", "lm_head"), r=2))
    batch = batch_for(chars)
    objective = DPOObjective(beta=0.5, adapter=adapted)
    # at the start the adapter adds nothing: policy = reference, the loss is log 2
    start = objective(adapted, batch)
    assert float(start.loss_sum.detach()) / 4 == pytest.approx(math.log(2), rel=1e-6)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    moved = objective(adapted, batch)
    with_copy = DPOObjective(beta=0.5, reference=copy_of_base)(adapted, batch)
    torch.testing.assert_close(moved.loss_sum, with_copy.loss_sum)  # the base, no copy needed
    assert abs(float(moved.loss_sum.detach()) / 4 - math.log(2)) > 1e-3


def test_no_reference_is_a_config_error(chars: Any, kit: Any) -> None:
    with pytest.raises(ConfigError, match="no reference"):
        DPOObjective()(kit.WideLM(), batch_for(chars))


# -- settings and inputs ----------------------------------------------------------------------


def test_bad_settings(tmp_path: Path, chars: Any, kit: Any) -> None:
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ConfigError, match="loss_type"):
        DPOConfig(loss_type="sigmoidd")
    with pytest.raises(ConfigError, match="reference: adapter needs finetune"):
        DPOConfig(reference="adapter")
    other = kit.WideLM(vocab=kit.CHAR_VOCAB + 1)
    with pytest.raises(CompatibilityError, match="vocabulary") as info:
        dpo(tmp_path, chars, kit.WideLM(), reference_model=other)
    assert info.value.key == "reference_model"


# -- the reference cache ----------------------------------------------------------------------


def test_cache_round_trip_and_rejection(tmp_path: Path) -> None:
    cache = ReferenceCache(tmp_path / "cache")
    pairs = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
    key = cache.key(pairs, "model-a")
    assert key != cache.key(pairs, "model-b")
    assert key != cache.key([{**pairs[0], "chosen_ids": [4]}], "model-a")
    assert cache.load(key, 1) is None
    file = cache.save(key, torch.tensor([-1.5]), torch.tensor([-2.5]))
    loaded = cache.load(key, 1)
    assert loaded is not None
    assert loaded[0].tolist() == [-1.5]
    assert cache.load(key, 2) is None  # another size
    file.write_bytes(b"garbage")
    assert cache.load(key, 1) is None  # damaged: rebuilt by the trainer
    cache.save(key, torch.tensor([float("nan")]), torch.tensor([0.0]))
    assert cache.load(key, 1) is None  # not finite


def test_precomputed_reference_is_cached(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    model = kit.WideLM()
    fingerprint = reference_fingerprint(model)
    first = dpo(tmp_path, chars, model, reference="precomputed", train={"max_steps": 2})
    assert first.reference_mode == "precomputed"
    assert first.cache_file is not None
    assert first.cache_file.parent == tmp_path / "run" / "reference-logps"
    stamp = first.cache_file.stat().st_mtime_ns
    expected = precompute_reference_logps(model, first.train_pairs, pad_id=3, batch_size=5)
    cached = first.trainer.train_data.collate_fn.reference  # type: ignore[attr-defined]
    torch.testing.assert_close(cached, expected)
    first.fit()
    assert reference_fingerprint(model) != fingerprint  # trained

    def again(name: str) -> DPOTrainer:
        torch.manual_seed(0)  # the same initial model
        return dpo(
            tmp_path,
            chars,
            kit.WideLM(),
            reference="precomputed",
            reference_cache_dir=str(first.cache_file.parent),  # type: ignore[union-attr]
            train={"out_dir": str(tmp_path / name), "max_steps": 1},
        )

    second = again("b")  # the same data and initial model: the file is read back
    assert second.cache_file == first.cache_file
    assert first.cache_file.stat().st_mtime_ns == stamp
    second.close()
    first.cache_file.write_bytes(b"not safetensors")  # damaged: rebuilt
    third = again("c")
    assert third.cache_file == first.cache_file
    cached = third.trainer.train_data.collate_fn.reference  # type: ignore[attr-defined]
    torch.testing.assert_close(cached, expected)
    third.close()


# -- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["copy", "adapter", "precomputed"])
def test_resume_is_exact(tmp_path: Path, chars: Any, kit: Any, reference: str) -> None:
    lora = reference == "adapter"

    def run(out: str, steps: int, resume: str = "") -> nn.Module:
        torch.manual_seed(0)
        model = kit.WideLM()
        trainer = dpo(
            tmp_path,
            chars,
            model,
            reference=reference,
            finetune="lora" if lora else "full",
            lora=LoraConfig(target_modules=("mix", "lm_head"), r=2),
            train={
                "out_dir": str(tmp_path / out),
                "max_steps": steps,
                "resume": resume,
                "checkpoint_every": 2,
            },
        )
        trainer.fit()
        return trainer.model

    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume="latest")
    assert isinstance(straight, LoraModel) == lora
    for (name, x), y in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(("reference", "finetune"), [("copy", "full"), ("adapter", "lora")])
def test_dpo_raises_held_out_preference_accuracy(
    tmp_path: Path, chars: Any, kit: Any, reference: str, finetune: str
) -> None:
    torch.manual_seed(0)
    trainer = dpo(
        tmp_path,
        chars,
        kit.WideLM(),
        rows=preference_rows(64),
        eval_rows=preference_rows(32, seed=1),
        reference=reference,
        finetune=finetune,
        lora=LoraConfig(target_modules=("mix", "lm_head", "embed"), r=4, lora_alpha=8.0),
        batch_size=8,
        train={"max_steps": 40, "eval_every": 20},
    )
    before = trainer.trainer.evaluate()
    assert before["val_rewards/accuracies"] == 0.0  # policy = reference: no margin yet
    state = trainer.fit()
    assert state.metrics["val_rewards/accuracies"] >= 0.9  # chance is 0.5
    assert state.metrics["val_rewards/margins"] > 0
    assert state.metrics["val_loss"] < math.log(2)
