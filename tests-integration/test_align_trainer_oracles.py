"""lego-align's SFT, reward-model and DPO trainers against TRL 1.x and transformers (CPU, fp32).

- SFT: TRL's ``SFTTrainer.compute_loss`` on its own collated batch (completion-only loss)
  equals the first step's loss of our ``SFTTrainer`` on the same examples, with a tiny
  random transformers Llama in TRL and the same weights loaded through lego-arch; for the
  plain prompt / completion form (EOS appended) and the conversational form with the
  Llama 3 template. The token ids are compared too.
- Reward model: a ``RewardModel`` around a lego-arch Llama / Qwen 3 saved with
  ``save_pretrained`` loads in ``AutoModelForSequenceClassification`` and gives the same
  scores (1e-5); TRL's ``RewardTrainer.compute_loss`` on its batch equals our
  ``RewardTrainer``'s first step loss on the same pairs (same weights).

The tokenizer is word-level (``w2`` ... ``w96``, whitespace-split) with the Llama 3 special
tokens, so that TRL (through transformers) and lego-data (through a thin ``Tokenizer``
adapter) produce the same ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed (the integration group)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (trl needs it)")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

from tiny_hf import VOCAB, tiny_llama, tiny_qwen3  # noqa: E402

import lego.arch  # noqa: E402
from lego.align import (  # noqa: E402
    DPOConfig,
    DPOTrainer,
    RewardCollator,
    RewardConfig,
    RewardModel,
    RewardTrainer,
    SFTConfig,
    SFTDataset,
    SFTTrainer,
)
from lego.protocols.chat import Llama3Template  # noqa: E402
from lego.train import TrainConfig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SPECIALS = [
    "<pad>",
    "<eos>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
PAD, EOS, BOS, EOT = 0, 1, 2, 5
WORDS = [*SPECIALS, "user", "assistant", "system", *(f"w{i}" for i in range(9, VOCAB))]
# Meta's Llama 3 Instruct template, as published with the model.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def hf_tokenizer(eos: str) -> Any:
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w9")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token=eos,
        bos_token="<|begin_of_text|>",
        unk_token="w9",
        chat_template=LLAMA3,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
    return tok


class LegoTokenizer:
    """lego's ``Tokenizer`` protocol over the transformers tokenizer (the same ids)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {t: WORDS.index(t) for t in SPECIALS}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids)))


def saved_llama(tmp: Path, name: str, seed: int = 0, **overrides: Any) -> Path:
    torch.manual_seed(seed)
    settings = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, **overrides}
    model = tiny_llama(**settings)
    folder = tmp / name
    model.save_pretrained(folder)
    return folder


def train_config(tmp: Path, name: str) -> TrainConfig:
    return TrainConfig(
        out_dir=str(tmp / name),
        max_steps=1,
        progress="none",
        peak_flops=1e12,
        optim={"lr": 1e-3, "weight_decay": 0.0, "grad_clip": 0.0},  # type: ignore[arg-type]
        schedule={"name": "constant"},  # type: ignore[arg-type]
    )


PLAIN = [
    {"prompt": "w10 w11 w12", "completion": " w13 w14"},
    {"prompt": "w15", "completion": " w16 w17 w18 w19"},
    {"prompt": "w20 w21", "completion": " w22"},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "w10 w11 w12"}],
        "completion": [{"role": "assistant", "content": "w13 w14"}],
    },
    {
        "prompt": [
            {"role": "system", "content": "w30"},
            {"role": "user", "content": "w15"},
        ],
        "completion": [{"role": "assistant", "content": "w16 w17 w18 w19"}],
    },
    {
        "prompt": [
            {"role": "user", "content": "w20"},
            {"role": "assistant", "content": "w40 w41"},
            {"role": "user", "content": "w21"},
        ],
        "completion": [{"role": "assistant", "content": "w22"}],
    },
]


@pytest.mark.parametrize(("form", "rows"), [("plain", PLAIN), ("conversational", CONVERSATIONAL)])
def test_sft_loss_equals_trl(tmp_path: Path, form: str, rows: list[dict[str, Any]]) -> None:
    eos = "<eos>" if form == "plain" else "<|eot_id|>"
    hf_tok = hf_tokenizer(eos)
    folder = saved_llama(tmp_path, "llama")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(rows),
        completion_only_loss=True,
        eos_token=eos,
    )
    trainer = trl.SFTTrainer(
        model=hf_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=hf_tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, dict(batch))

    tok = LegoTokenizer(hf_tok)
    template = None if form == "plain" else Llama3Template()
    config = SFTConfig(
        template="none" if form == "plain" else "llama3",
        eos_token=eos,
        pad_token="<pad>",
        batch_size=len(rows),
        max_length=64,
        shuffle=False,
    )
    # the same token sequences as TRL's (ours are shifted: inputs + the last label)
    ours_data = SFTDataset(rows, tok, template=template, eos_token=eos, max_length=64)
    their_rows = {
        tuple(ids[mask.bool()].tolist())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    }
    our_rows = {(*ex.input_ids, ex.labels[-1]) for ex in ours_data}
    assert our_rows == their_rows
    their_trained = {
        tuple(ids[labels != -100].tolist())
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
    }
    our_trained = {tuple(t for t in ex.labels if t != -100) for ex in ours_data}
    assert our_trained == their_trained
    assert all(row[-1] == WORDS.index(eos) for row in our_trained)  # the end token is trained

    sft = SFTTrainer(
        model=lego.arch.from_hf(folder),
        tokenizer=tok,
        train_data=rows,
        config=config,
        train=train_config(tmp_path, "ours"),
    )
    try:
        ours = sft.trainer.train_step()["loss"]
    finally:
        sft.close()
    assert ours == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-6)


# -- reward models ---------------------------------------------------------------------------


def scores_of(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out: torch.Tensor = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    return out.squeeze(-1)


@pytest.mark.parametrize(
    ("family", "overrides"),
    [("llama", {}), ("llama", {"tie_word_embeddings": True}), ("qwen3", {})],
)
def test_saved_reward_model_loads_in_transformers(
    tmp_path: Path, family: str, overrides: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    builder = tiny_llama if family == "llama" else tiny_qwen3
    hf = builder(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, **overrides)
    hf.save_pretrained(tmp_path / "lm")
    backbone = lego.arch.from_hf(tmp_path / "lm")
    rm = RewardModel(backbone, pad_token_id=PAD)
    with torch.no_grad():
        rm.score.weight.normal_(0.0, 1.0)  # scores far from 0
    folder = rm.save_pretrained(tmp_path / "rm")
    theirs_model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    theirs_model.eval()
    assert type(theirs_model).__name__.endswith("ForSequenceClassification")
    assert theirs_model.config.num_labels == 1

    gen = torch.Generator().manual_seed(1)
    pairs = []
    from lego.align import RewardPair

    for length in (3, 7, 5, 9):
        ids = torch.randint(9, VOCAB, (length,), generator=gen).tolist()
        pairs.append(RewardPair([*ids, EOT], [*ids[:2], EOT]))
    batch = RewardCollator(pad_id=PAD)(pairs)
    rm.eval()
    with torch.no_grad():
        ours = rm(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        )
        theirs = scores_of(theirs_model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert float(ours.std()) > 0.1  # not a constant

    # and back: the directory loads into a fresh reward model (lego-train's resume path)
    torch.manual_seed(5)
    again = RewardModel(lego.arch.from_hf(tmp_path / "lm"), pad_token_id=PAD)
    again.load_weights(folder)
    again.eval()
    with torch.no_grad():
        reloaded = again(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        )
    torch.testing.assert_close(reloaded, ours)


REWARD_ROWS = [
    {
        "prompt": [{"role": "user", "content": "w10 w11"}],
        "chosen": [{"role": "assistant", "content": "w12 w13"}],
        "rejected": [{"role": "assistant", "content": "w14"}],
    },
    {
        "prompt": [{"role": "user", "content": "w15"}],
        "chosen": [{"role": "assistant", "content": "w16"}],
        "rejected": [{"role": "assistant", "content": "w17 w18 w19"}],
    },
    {
        "prompt": [{"role": "system", "content": "w30"}, {"role": "user", "content": "w20"}],
        "chosen": [{"role": "assistant", "content": "w21 w22 w23"}],
        "rejected": [{"role": "assistant", "content": "w24 w25"}],
    },
]


@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_loss_equals_trl(tmp_path: Path, center: float | None) -> None:
    hf_tok = hf_tokenizer("<|eot_id|>")
    torch.manual_seed(0)
    hf = tiny_llama(bos_token_id=BOS, eos_token_id=EOT, pad_token_id=PAD)
    hf.save_pretrained(tmp_path / "lm")
    rm = RewardModel(lego.arch.from_hf(tmp_path / "lm"), pad_token_id=PAD)
    with torch.no_grad():
        rm.score.weight.normal_(0.0, 1.0)
    folder = rm.save_pretrained(tmp_path / "rm")

    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(REWARD_ROWS),
        center_rewards_coefficient=center,
    )
    trainer = trl.RewardTrainer(
        model=classifier,
        args=args,
        train_dataset=datasets.Dataset.from_list(REWARD_ROWS),
        processing_class=hf_tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, dict(batch))

    ours_trainer = RewardTrainer(
        model=rm,
        tokenizer=LegoTokenizer(hf_tok),
        train_data=REWARD_ROWS,
        config=RewardConfig(
            template="llama3",
            eos_token="<|eot_id|>",
            pad_token="<pad>",
            batch_size=len(REWARD_ROWS),
            center_rewards_coefficient=center,
        ),
        train=train_config(tmp_path, "ours"),
    )
    # the same sequences as TRL's
    their_rows = {
        tuple(ids[mask.bool()].tolist())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    }
    our_rows = {tuple(p.chosen) for p in ours_trainer.train_pairs} | {
        tuple(p.rejected) for p in ours_trainer.train_pairs
    }
    assert our_rows == their_rows
    try:
        ours = ours_trainer.trainer.train_step()["loss"]
    finally:
        ours_trainer.close()
    assert ours == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-6)


# -- DPO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_trainer_loss_equals_trl(tmp_path: Path, loss_type: str) -> None:
    hf_tok = hf_tokenizer("<|eot_id|>")
    folder = saved_llama(tmp_path, "llama", eos_token_id=EOT)
    reference = saved_llama(tmp_path, "reference", seed=1, eos_token_id=EOT)  # other weights
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(REWARD_ROWS),
        beta=0.3,
        loss_type=[loss_type],
    )
    trainer = trl.DPOTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(folder),
        ref_model=transformers.AutoModelForCausalLM.from_pretrained(reference),
        args=args,
        train_dataset=datasets.Dataset.from_list(REWARD_ROWS),
        processing_class=hf_tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer._compute_loss(trainer.model, dict(batch), return_outputs=False)

    ours_trainer = DPOTrainer(
        model=lego.arch.from_hf(folder),
        tokenizer=LegoTokenizer(hf_tok),
        train_data=REWARD_ROWS,
        config=DPOConfig(
            template="llama3",
            eos_token="<|eot_id|>",
            pad_token="<pad>",
            batch_size=len(REWARD_ROWS),
            loss_type=loss_type,
            beta=0.3,
        ),
        train=train_config(tmp_path, "ours"),
        reference_model=lego.arch.from_hf(reference),
    )
    # the same rows (prompt + response) and completion tokens as TRL's
    their_rows = {
        tuple(ids[mask.bool()].tolist())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    }
    their_completions = {
        tuple(ids[mask.bool()].tolist())
        for ids, mask in zip(batch["input_ids"], batch["completion_mask"], strict=True)
    }
    pairs = ours_trainer.train_pairs
    our_rows = {
        tuple(p["prompt_ids"] + p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")
    }
    our_completions = {tuple(p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")}
    assert our_rows == their_rows
    assert our_completions == their_completions
    try:
        ours = ours_trainer.trainer.train_step()["loss"]
    finally:
        ours_trainer.close()
    assert ours == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-6)
    trivial = {"sigmoid": math.log(2), "ipo": (1 / 0.6) ** 2, "hinge": 1.0}[loss_type]
    assert abs(ours - trivial) > 1e-3  # the reference differs from the policy
