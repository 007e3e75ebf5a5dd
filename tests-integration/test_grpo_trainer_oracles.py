"""lego-align's GRPO trainer against TRL 1.16's ``GRPOTrainer`` on the same rollout (CPU, fp32).

Our ``GRPOTrainer`` (a tiny random Llama loaded through lego-arch) makes one real generation:
two prompts x four completions from lego-generate's ``rollout()``, scored by a reward
function, with group advantages, split into ``grad_accum = 2`` micro-batches of four rows.
The same rows go to a real TRL ``GRPOTrainer`` (the same weights through transformers,
``gradient_accumulation_steps=2``, ``per_device_train_batch_size=4``) as the inputs its
``_compute_loss`` reads (prompt and completion ids and masks, advantages, old and reference
per-token log-probabilities, ``num_items_in_batch``). TRL's step is the sum of its two
micro-batch losses (each already scaled for accumulation); ours is lego-train's reduction,
the summed ``GRPOObjective`` losses over the summed units. Loss and every parameter's
gradient must agree (1e-5) for each loss type, with ``beta`` 0 and > 0, on-policy and with
``num_iterations=2`` (old log-probabilities). The old / reference log-probabilities our
trainer computed are moved away from the policy's (the same noise on both sides) so that
tokens clip and the KL term is not zero.

Prompts have the same length: TRL calls the model without ``position_ids``, so a left-padded
row would sit at other positions there than in our trainer (which passes the positions of
the real tokens, as the rollout generated them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

trl = pytest.importorskip("trl", reason="trl is not installed (the integration group)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (trl needs it)")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tiny_hf import VOCAB, tiny_llama  # noqa: E402

import lego.arch  # noqa: E402
from lego.align import GRPO_LOSS_TYPES, GRPOConfig, GRPOTrainer  # noqa: E402
from lego.train import TrainConfig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

PAD, EOS = 0, 1
WORDS = ["<pad>", "<eos>", *(f"w{i}" for i in range(2, VOCAB))]
MAX_COMPLETION = 6
TEMPERATURE = 0.8
PROMPTS = [{"prompt": "w3 w4 w5", "target": "w7"}, {"prompt": "w6 w7 w8", "target": "w9"}]


def hf_tokenizer() -> Any:
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w2")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="w2"
    )


class LegoTokenizer:
    """lego's ``Tokenizer`` protocol over the transformers tokenizer (the same ids)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return len(WORDS)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {"<pad>": PAD, "<eos>": EOS}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=False))


def hits(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """The completion's word numbers and its row's target, summed modulo 5 (spread rewards)."""
    out = []
    for completion, target in zip(completions, columns["target"], strict=True):
        numbers = [int(w[1:]) for w in (*completion.split(), target) if w[1:].isdigit()]
        out.append(float(sum(numbers) % 5))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("grpo-trainer") / "llama"
    model = tiny_llama(bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    with torch.no_grad():  # random norm scales: every parameter unique (matched by value)
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


def trl_trainer(tmp: Path, model_dir: Path, **settings: Any) -> Any:
    args = trl.GRPOConfig(
        output_dir=str(tmp / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=MAX_COMPLETION,
        temperature=TEMPERATURE,
        **settings,
    )
    trainer = trl.GRPOTrainer(
        model=str(model_dir),
        reward_funcs=hits,
        args=args,
        train_dataset=datasets.Dataset.from_list(PROMPTS),
        processing_class=hf_tokenizer(),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by transformers' loop in training
    return trainer


def our_generation(
    tmp: Path, model_dir: Path, **settings: Any
) -> tuple[GRPOTrainer, list[dict[str, Tensor]]]:
    """Our trainer and the two micro-batches of its first generation."""
    torch.manual_seed(0)
    ours = GRPOTrainer(
        model=lego.arch.from_hf(model_dir),
        tokenizer=LegoTokenizer(hf_tokenizer()),
        train_data=PROMPTS,
        reward_funcs=[hits],
        config=GRPOConfig(
            template="none",
            eos_token="<eos>",
            pad_token="<pad>",
            num_generations=4,
            prompts_per_step=2,
            max_completion_length=MAX_COMPLETION,
            temperature=TEMPERATURE,
            shuffle=False,
            seed=1,
            **settings,
        ),
        train=TrainConfig(out_dir=str(tmp / "ours"), max_steps=1, grad_accum=2, progress="none"),
    )
    batches = iter(ours.source)
    micro = [next(batches), next(batches)]
    ours.close()
    return ours, micro


def parameter_pairs(theirs: nn.Module, ours: nn.Module) -> list[tuple[str, Tensor, Tensor]]:
    """Match the two models' parameters by their (random, hence unique) values."""
    pairs = []
    mine = list(ours.named_parameters())
    for name, parameter in theirs.named_parameters():
        found = [p for _, p in mine if p.shape == parameter.shape and torch.equal(p, parameter)]
        assert len(found) == 1, name
        pairs.append((name, parameter, found[0]))
    assert len(pairs) == len(mine)
    return pairs


@pytest.mark.parametrize("policy", ["on", "off"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_grpo_step_equals_trl(
    tmp_path: Path, model_dir: Path, loss_type: str, beta: float, policy: str
) -> None:
    iterations = 1 if policy == "on" else 2
    settings = {
        "loss_type": loss_type,
        "beta": beta,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "num_iterations": iterations,
    }
    ours, micro = our_generation(tmp_path, model_dir, **settings)
    theirs = trl_trainer(tmp_path, model_dir, **settings)
    scores = ours.source.last_scores
    assert scores is not None
    assert float(scores.total.std()) > 0  # the rollout's rewards differ: real advantages
    generator = torch.Generator().manual_seed(11)
    for batch in micro:  # away from the policy: tokens clip, the KL term is not zero
        mask = batch["completion_mask"].bool()
        for key, scale in (("old_logps", 0.3), ("ref_logps", 0.5)):
            if key in batch:
                noise = scale * torch.randn(batch[key].shape, generator=generator)
                batch[key] = torch.where(mask, batch[key] + noise, 0.0)
    assert ("old_logps" in micro[0]) == (iterations > 1)
    assert ("ref_logps" in micro[0]) == (beta > 0)

    # TRL: two micro-batches, each with the generation batch's token count
    num_items = sum(b["completion_mask"].sum() for b in micro)
    trl_loss = torch.zeros(())
    for batch in micro:
        n = batch["completion_mask"].shape[1]
        inputs: dict[str, Any] = {
            "prompt_ids": batch["input_ids"][:, :-n],
            "prompt_mask": batch["attention_mask"][:, :-n],
            "completion_ids": batch["input_ids"][:, -n:],
            "completion_mask": batch["completion_mask"],
            "advantages": batch["advantages"],
            "num_items_in_batch": num_items,
        }
        assert bool(inputs["prompt_mask"].all())  # no left padding (see the module docstring)
        if "old_logps" in batch:
            inputs["old_per_token_logps"] = batch["old_logps"]
        if "ref_logps" in batch:
            inputs["ref_per_token_logps"] = batch["ref_logps"]
        trl_loss = trl_loss + theirs._compute_loss(theirs.model, inputs)
    trl_loss.backward()

    # ours: lego-train's reduction of the step
    model = ours.model
    model.train()
    objective = ours.objective
    units = sum(objective.units(b) for b in micro)
    outputs = [objective(model, b) for b in micro]
    loss = sum(out.loss_sum for out in outputs) / units
    assert isinstance(loss, Tensor)
    loss.backward()
    if policy == "off":  # the old log-probs are away from the policy: the clipped branches count
        assert sum(float(out.metrics["clip_ratio/region_mean"]) for out in outputs) > 0
    if beta > 0:
        assert sum(float(out.metrics["kl"]) for out in outputs) > 0

    assert float(loss.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5, abs=1e-6)
    pairs = parameter_pairs(theirs.model, model)
    moved = 0.0
    for name, a, b in pairs:
        assert a.grad is not None, name
        assert b.grad is not None, name
        ours_grad, their_grad = b.grad, a.grad
        if name == "model.embed_tokens.weight":
            # transformers' Llama embedding has padding_idx=PAD: its row never gets a gradient,
            # even where the policy sampled the id as a real token; lego-arch's has no such rule
            assert not bool(their_grad[PAD].any())
            ours_grad, their_grad = ours_grad[PAD + 1 :], their_grad[PAD + 1 :]
        torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-6, msg=name)
        moved += float(a.grad.abs().sum())
    assert moved > 0
