"""lego-align's packed SFT on lego-arch models: documents kept apart, loss = unpacked loss.

lego-arch's ``DecoderLM`` takes ``document_ids``, so lego-align packs for it without
``cross_document_attention``: each packed document attends only to itself, with positions
restarting (GPT-2's learned positions as well as RoPE), and the SFT loss over a packed step
equals the loss over the same examples padded one per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import lego.arch
from lego.align import SFTConfig, SFTDataset, SFTObjective, SFTTrainer, accepts_document_ids
from lego.data import PaddingCollator, pack_examples
from lego.data.packing import PackedCollator
from lego.protocols.chat import ChatMLTemplate
from lego.train import TokenObjective, TrainConfig

SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|pad|>": 3}
ALPHABET = " \nabcdefghijklmnopqrstuvwxyz0123456789.,?!:"
PAD, EOS = 3, 2

ROWS: list[dict[str, Any]] = [
    {"prompt": "what is one plus one?", "completion": "two."},
    {"prompt": "say hi.", "completion": "hi!"},
    {
        "messages": [
            {"role": "user", "content": "name a color."},
            {"role": "assistant", "content": "red."},
        ]
    },
    {"instruction": "count to three.", "output": "1 2 3"},
    {"prompt": "spell cat.", "completion": "c a t"},
    {"prompt": "what is ice?", "completion": "cold water."},
]
MAX_LENGTH = 96


class Chars:
    """One id per character of ``ALPHABET`` after the special tokens (a lego Tokenizer)."""

    vocab_size = len(SPECIALS) + len(ALPHABET)
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return [len(SPECIALS) + ALPHABET.index(c) for c in text]

    def decode(self, ids: Any) -> str:
        names = {v: k for k, v in SPECIALS.items()}
        return "".join(names.get(int(i)) or ALPHABET[int(i) - len(SPECIALS)] for i in ids)


def tiny(name: str) -> lego.arch.DecoderLM:
    torch.manual_seed(0)
    return lego.arch.build(name).train()  # the tiny presets have no dropout


@pytest.mark.parametrize("name", ["llama-tiny", "qwen3-tiny", "gpt2-tiny"])
def test_packed_sft_loss_equals_the_padded_loss(name: str) -> None:
    model = tiny(name)
    assert accepts_document_ids(model)
    data = SFTDataset(ROWS, Chars(), template=ChatMLTemplate())
    padded = PaddingCollator(pad_id=PAD, eos_id=EOS)(list(data))
    rows = pack_examples(data, max_length=MAX_LENGTH, pad_id=PAD)
    assert len(rows) < len(data)  # really packed
    packed: Any = PackedCollator()(rows)

    unpacked = TokenObjective()(model, padded)
    together = SFTObjective(document_ids=True)(model, packed)
    assert int(together.tokens) == int(unpacked.tokens)
    torch.testing.assert_close(together.loss_sum, unpacked.loss_sum, rtol=1e-6, atol=1e-5)
    # the gradients too
    grads_unpacked = torch.autograd.grad(unpacked.loss_sum, list(model.parameters()))
    grads_packed = torch.autograd.grad(together.loss_sum, list(model.parameters()))
    for a, b in zip(grads_packed, grads_unpacked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the control: without document_ids the documents of a row see each other
    crossing = SFTObjective(document_ids=False)(model, packed)
    assert abs(float((crossing.loss_sum - unpacked.loss_sum).detach())) > 1e-3


def train_config(tmp: Path, name: str) -> TrainConfig:
    return TrainConfig(
        out_dir=str(tmp / name),
        max_steps=1,
        progress="none",
        peak_flops=1e12,
        optim={"lr": 1e-3, "weight_decay": 0.0},  # type: ignore[arg-type]
        schedule={"name": "constant"},  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_trainer_packs_for_a_lego_arch_model(tmp_path: Path, lora: bool) -> None:
    """No cross_document_attention needed; the first packed step has the padded step's loss."""
    n_rows = len(
        pack_examples(
            SFTDataset(ROWS, Chars(), template=ChatMLTemplate()),
            max_length=MAX_LENGTH,
            pad_id=PAD,
        )
    )
    settings: dict[str, Any] = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "max_length": MAX_LENGTH,
        "shuffle": False,
    }
    if lora:
        from lego.peft import LoraConfig

        settings.update(finetune="lora", lora=LoraConfig(r=4, target_modules=("q_proj", "v_proj")))
    losses = {}
    for packing, batch_size in ((True, n_rows), (False, len(ROWS))):
        sft = SFTTrainer(
            model=tiny("llama-tiny"),
            tokenizer=Chars(),
            train_data=ROWS,
            config=SFTConfig(**settings, packing=packing, batch_size=batch_size),
            train=train_config(tmp_path, f"packing-{packing}"),
        )
        try:
            objective = sft.trainer.objective
            assert isinstance(objective, SFTObjective)
            assert objective.document_ids is packing
            losses[packing] = sft.trainer.train_step()["loss"]
        finally:
            sft.close()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
