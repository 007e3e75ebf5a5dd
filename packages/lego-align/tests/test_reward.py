"""Reward models: the score head, saving for transformers, the objective, training, evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lego.align import (
    RewardCollator,
    RewardConfig,
    RewardModel,
    RewardObjective,
    RewardPair,
    RewardTrainer,
    evaluate_rewards,
    reward_loss,
    reward_pairs,
)
from lego.data import PreferenceDataset
from lego.protocols import CompatibilityError, ConfigError, DataError
from lego.train import TrainConfig


def batch_of(pairs: list[RewardPair], pad: int = 3) -> dict[str, Tensor]:
    return RewardCollator(pad_id=pad)(pairs)


def manual_rewards(rm: RewardModel, batch: dict[str, Tensor]) -> Tensor:
    """The score head applied to the backbone's hidden state at each row's last real token."""
    backbone = rm.backbone
    hidden = backbone.hidden(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding
    picked = hidden[torch.arange(hidden.shape[0]), last]  # (B, W)
    return picked @ rm.score.weight[0]


def test_rewards_are_read_at_the_last_real_token(kit: Any) -> None:
    torch.manual_seed(0)
    rm = RewardModel(kit.WideLM())
    batch = batch_of([RewardPair([5, 6, 7, 2], [5, 8, 2]), RewardPair([9, 2], [9, 10, 11, 12, 2])])
    rewards = rm(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    )
    assert rewards.shape == (4,)
    torch.testing.assert_close(rewards, manual_rewards(rm, batch))
    # left padding with its position ids gives the same rewards
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(dim=1)
    left_ids = torch.full_like(ids, 3)
    left_mask = torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, ids.shape[1] - n :] = ids[i, :n]
        left_mask[i, ids.shape[1] - n :] = 1
    positions = (left_mask.cumsum(dim=1) - 1).clamp(min=0)
    left = rm(left_ids, attention_mask=left_mask, position_ids=positions)
    torch.testing.assert_close(left, rewards, rtol=1e-5, atol=1e-6)


def test_the_head_is_replaced_not_computed(kit: Any) -> None:
    model = kit.WideLM()
    before = sum(p.numel() for p in model.parameters())
    rm = RewardModel(model)
    assert rm.score.weight.shape == (1, 8)
    assert rm.score is model.lm_head  # the backbone's own forward now ends in the score
    out = model(torch.tensor([[5, 6]]))
    assert out.shape == (1, 2, 1)  # no vocabulary-sized logits
    names = dict(rm.named_parameters())
    assert "backbone.lm_head.weight" in names
    head = kit.CHAR_VOCAB * 8 + kit.CHAR_VOCAB  # the output head's weight and bias
    assert sum(p.numel() for p in names.values()) == before - head + 8


def test_a_missing_head_is_a_config_error(kit: Any) -> None:
    with pytest.raises(ConfigError, match=r"no nn\.Linear output head named 'head'") as info:
        RewardModel(kit.WideLM(), head_name="head")
    assert info.value.key == "head_name"
    with pytest.raises(ConfigError, match="found Embedding"):
        RewardModel(kit.WideLM(), head_name="embed")


def test_gradients_reach_the_score_and_the_backbone(kit: Any) -> None:
    torch.manual_seed(0)
    rm = RewardModel(kit.WideLM())
    batch = batch_of([RewardPair([5, 6, 2], [5, 7, 2])])
    out = RewardObjective()(rm, batch)
    out.loss_sum.backward()  # type: ignore[no-untyped-call]
    assert rm.score.weight.grad is not None
    assert rm.backbone.mix.weight.grad is not None
    assert float(rm.score.weight.grad.abs().sum()) > 0


def test_the_objective_is_bradley_terry_per_pair(kit: Any) -> None:
    torch.manual_seed(0)
    rm = RewardModel(kit.WideLM())
    pairs = [RewardPair([5, 6, 2], [5, 7, 2], 0.5), RewardPair([8, 2], [8, 9, 10, 2], 0.0)]
    batch = batch_of(pairs)
    objective = RewardObjective(center_rewards_coefficient=0.01)
    assert objective.units(batch) == 2
    out = objective(rm, batch)
    rewards = manual_rewards(rm, batch).detach()
    expected = reward_loss(
        rewards[:2], rewards[2:], margin=torch.tensor([0.5, 0.0]), center_rewards_coefficient=0.01
    )
    torch.testing.assert_close(out.loss_sum / 2, expected.loss)
    assert float(out.metrics["accuracy"]) == pytest.approx(float((rewards[:2] > rewards[2:]).sum()))
    assert float(out.metrics["margin"]) == pytest.approx(float((rewards[:2] - rewards[2:]).sum()))
    assert int(out.tokens) == 3 + 3 + 2 + 4
    with pytest.raises(DataError, match="chosen; rejected"):
        objective.units({"input_ids": torch.zeros(3, 2, dtype=torch.long)})


# -- saving ------------------------------------------------------------------------------------


def test_plain_save_and_load(tmp_path: Path, kit: Any) -> None:
    torch.manual_seed(0)
    rm = RewardModel(kit.WideLM())
    rm.save_pretrained(tmp_path / "rm")
    torch.manual_seed(1)
    other = RewardModel(kit.WideLM())
    batch = batch_of([RewardPair([5, 6, 2], [5, 7, 8, 2])])
    args = {"attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    assert not torch.equal(other(batch["input_ids"], **args), rm(batch["input_ids"], **args))
    other.load_weights(tmp_path / "rm")
    torch.testing.assert_close(other(batch["input_ids"], **args), rm(batch["input_ids"], **args))


def hf_named(kit: Any, shards: int = 1) -> Any:
    """A WideLM with transformers-style names (``model.<name>``, ``lm_head.weight``) that
    writes its own directory, in ``shards`` files."""

    class HFNamed(kit.WideLM):  # type: ignore[misc, name-defined]
        def hf_parameter_name(self, name: str) -> tuple[str, bool]:
            if name.startswith("lm_head."):
                return name, False
            return "model." + name, name == "mix.weight"  # one transposed tensor

        def save_pretrained(self, path: Path, *, state_dict: dict[str, Tensor]) -> Path:
            path.mkdir(parents=True, exist_ok=True)
            tensors: dict[str, Tensor] = {}
            for name, value in state_dict.items():
                hf, transposed = self.hf_parameter_name(name)
                tensors[hf] = (value.T if transposed else value).contiguous().clone()
            assert tensors["lm_head.weight"].shape[0] > 1  # the original head was put back
            names = sorted(tensors)
            if shards == 1:
                save_file(tensors, str(path / "model.safetensors"))
            else:
                weight_map = {}
                for i in range(shards):
                    file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                    group = names[i::shards]
                    save_file({n: tensors[n] for n in group}, str(path / file))
                    weight_map.update(dict.fromkeys(group, file))
                index = {"metadata": {"total_size": 1000}, "weight_map": weight_map}
                (path / "model.safetensors.index.json").write_text(json.dumps(index))
            config = {"architectures": ["TinyForCausalLM"]}
            (path / "config.json").write_text(json.dumps(config))
            return path

    return HFNamed()


@pytest.mark.parametrize("shards", [1, 2])
def test_transformers_layout(tmp_path: Path, kit: Any, shards: int) -> None:
    torch.manual_seed(0)
    rm = RewardModel(hf_named(kit, shards), pad_token_id=3)
    folder = rm.save_pretrained(tmp_path / "rm")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["TinyForSequenceClassification"]
    assert config["id2label"] == {"0": "LABEL_0"}
    assert config["pad_token_id"] == 3
    tensors: dict[str, Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    assert "lm_head.weight" not in tensors
    torch.testing.assert_close(tensors["score.weight"], rm.score.weight.detach())
    torch.testing.assert_close(
        tensors["model.mix.weight"], rm.backbone.mix.weight.detach().T
    )  # transposed as its name says
    if shards == 2:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert "lm_head.weight" not in index["weight_map"]
        assert index["weight_map"]["score.weight"] in {f.name for f in folder.glob("*.safetensors")}
        width, vocab = 8, kit.CHAR_VOCAB
        assert index["metadata"]["total_size"] == 1000 + 4 * (width - vocab * width)
    # back into a fresh reward model
    torch.manual_seed(1)
    other = RewardModel(hf_named(kit, shards))
    other.load_weights(folder)
    for (name, a), b in zip(rm.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_a_foreign_architecture_is_refused(tmp_path: Path, kit: Any) -> None:
    backbone = hf_named(kit)
    save = backbone.save_pretrained

    def odd(path: Path, *, state_dict: dict[str, Tensor]) -> Path:
        save(path, state_dict=state_dict)
        (path / "config.json").write_text(json.dumps({"architectures": ["TinyEncoder"]}))
        return path

    backbone.save_pretrained = odd
    rm = RewardModel(backbone)
    with pytest.raises(CompatibilityError, match="no sequence-classification counterpart"):
        rm.save_pretrained(tmp_path / "rm")


def test_loading_other_weights_lists_the_problems(tmp_path: Path, kit: Any) -> None:
    rm = RewardModel(hf_named(kit))
    folder = rm.save_pretrained(tmp_path / "rm")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.mix.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CompatibilityError, match=r"missing model\.mix\.bias"):
        RewardModel(hf_named(kit)).load_weights(folder)


# -- data, training, evaluation -----------------------------------------------------------------


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs where the chosen answer is always made of a's and the rejected of b's."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        j = int(torch.randint(1, 4, (1,), generator=gen))
        prompt = "pick one" + "!" * int(torch.randint(0, 3, (1,), generator=gen))
        rows.append({"prompt": prompt, "chosen": "a" * k, "rejected": "b" * j})
    return rows


def test_reward_pairs(chars: Any) -> None:
    rows = [
        {"prompt": "q" * 30, "chosen": "yes", "rejected": "no"},
        {"prompt": "same", "chosen": "x", "rejected": "x"},
        {"prompt": "q", "chosen": "z" * 40, "rejected": "no"},
        {"prompt": "fine", "chosen": "a", "rejected": "b"},
    ]
    data = PreferenceDataset(rows, chars, template="chatml")
    pairs, counts = reward_pairs(
        data, max_length=32, on_overflow="drop", identical="skip", path="p.jsonl"
    )
    assert counts == {"pairs": 2, "truncated": 1, "dropped": 1, "identical": 1}
    for pair in pairs:
        assert max(len(pair.chosen), len(pair.rejected)) <= 32
        assert pair.chosen[-1] == pair.rejected[-1] == 2  # read at the end-of-turn token
    with pytest.raises(DataError, match="identical") as info:
        reward_pairs(data, max_length=32, on_overflow="drop", identical="error", path="p.jsonl")
    assert (info.value.line, info.value.path) == (2, "p.jsonl")
    with pytest.raises(DataError, match="does not fit max_length=32"):
        reward_pairs(data, max_length=32, on_overflow="error", identical="skip")


def test_training_raises_held_out_accuracy(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    config = RewardConfig(template="chatml", batch_size=8, max_length=64)
    train = TrainConfig(
        out_dir=str(tmp_path / "run"),
        max_steps=40,
        progress="none",
        peak_flops=1e12,
        optim={"lr": 3e-2, "min_lr": 3e-2, "weight_decay": 0.0},  # type: ignore[arg-type]
        schedule={"name": "constant"},  # type: ignore[arg-type]
        eval_every=40,
    )
    trainer = RewardTrainer(
        model=kit.WideLM(),
        tokenizer=chars,
        train_data=preference_rows(64),
        eval_data=preference_rows(32, seed=1),
        config=config,
        train=train,
    )
    before = trainer.evaluate()
    assert before["pairs"] == 32
    state = trainer.fit()
    after = trainer.evaluate()
    assert after["accuracy"] >= 0.9
    assert after["accuracy"] > before["accuracy"] + 0.2
    assert after["margin"] > before["margin"]
    assert state.metrics["val_accuracy"] == pytest.approx(after["accuracy"])
    assert state.metrics["val_margin"] == pytest.approx(after["margin"], rel=1e-5, abs=1e-6)
    assert "val_ppl" not in state.metrics
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000040" / "model"
    reloaded = RewardModel(kit.WideLM())
    reloaded.load_weights(checkpoint)
    batch = RewardCollator(pad_id=3)(trainer.eval_pairs or [])
    assert evaluate_rewards(reloaded, [batch])["accuracy"] == pytest.approx(after["accuracy"])


def test_reward_trainer_without_held_out_pairs(tmp_path: Path, chars: Any, kit: Any) -> None:
    trainer = RewardTrainer(
        model=kit.WideLM(),
        tokenizer=chars,
        train_data=preference_rows(8),
        config=RewardConfig(batch_size=4),
        train=TrainConfig(out_dir=str(tmp_path / "run"), max_steps=1, progress="none"),
    )
    try:
        with pytest.raises(ConfigError, match="no held-out pairs"):
            trainer.evaluate()
    finally:
        trainer.close()
