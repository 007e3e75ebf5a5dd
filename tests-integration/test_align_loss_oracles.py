"""lego-align's log-probabilities and losses against TRL 1.x (the oracle), on CPU in float64.

How TRL is called without training: TRL 1.16 has no standalone DPO / KTO / reward loss
function; the formulas live inside ``DPOTrainer._compute_loss``, ``KTOTrainer._compute_loss``
and ``RewardTrainer.compute_loss``, which take a model and a batch. So each test builds a
real trainer (a tiny random Llama, a word-level tokenizer and a two-row dataset: about 40 ms)
with the settings under test, and hands its loss method a stand-in model whose output
carries chosen per-token log-probabilities (``log_probs``, what TRL's fused LM head returns)
or rewards (``logits``): the per-sequence log-probabilities are leaf tensors, so TRL's loss
and ours are compared as functions of the same inputs, values and gradients. ``CPOTrainer``
(SimPO) and ``ORPOTrainer`` expose their losses as methods that read a few attributes; those
are called unbound on a ``SimpleNamespace``. Everything the trainers read comes from their
own construction, so a TRL release that renames a setting fails here loudly.

Formulas TRL no longer ships (conservative DPO: TRL 1.16's ``"sigmoid"`` ignores
``label_smoothing``) are checked against the paper's formula written out in the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

trl = pytest.importorskip("trl", reason="trl is not installed (the integration group)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (trl needs it)")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tiny_hf import VOCAB, tiny_llama  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402

from lego.align import (  # noqa: E402
    DPO_LOSS_TYPES,
    HeadInputs,
    build_preference_batch,
    dpo_loss,
    kto_loss,
    orpo_loss,
    reward_loss,
    sequence_logprobs,
    simpo_loss,
)

# transformers and TRL warn about their own settings (experimental trainers, deprecations)
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TOL = {"rtol": 1e-6, "atol": 1e-6}
BETA = 0.3
PAD, EOS = 0, 1
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


# -- the trainers -------------------------------------------------------------------------------


def word_tokenizer() -> Any:
    """A word-level tokenizer over ``VOCAB`` words: ``<pad>`` 0, ``<eos>`` 1, ``w2`` ... ."""
    words = ["<pad>", "<eos>", *(f"w{i}" for i in range(2, VOCAB))]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w2")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="w2"
    )


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return word_tokenizer()


@pytest.fixture(scope="module")
def pairs_dataset() -> Any:
    return datasets.Dataset.from_list(
        [
            {"prompt": "w3 w4", "chosen": " w5 w6", "rejected": " w7"},
            {"prompt": "w8", "chosen": " w9", "rejected": " w10 w11"},
        ]
    )


def llama(seed: int) -> Any:
    torch.manual_seed(seed)
    return tiny_llama(bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)


def dpo_trainer(tmp: Path, tokenizer: Any, dataset: Any, **settings: Any) -> Any:
    """A real ``DPOTrainer`` with ``settings`` (DPOConfig fields), never trained."""
    model = llama(0)
    args = trl.DPOConfig(
        output_dir=str(tmp),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=2,
        **settings,
    )
    return trl.DPOTrainer(
        model=model,
        ref_model=llama(1),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def fake_outputs(per_token: Tensor) -> SimpleNamespace:
    """What TRL's fused LM head returns, with chosen per-token log-probabilities."""
    zeros = torch.zeros_like(per_token).detach()
    return SimpleNamespace(
        log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
    )


class FakeModel:
    """Returns fixed outputs whatever it is given (TRL passes input_ids, labels, ...)."""

    def __init__(self, outputs: Callable[[dict[str, Any]], SimpleNamespace]) -> None:
        self.outputs = outputs

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        return self.outputs(kwargs)


def place(logps: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probabilities ``(N, T-1)`` summing to ``logps`` ``(N,)``.

    Each row's value sits at its first completion token (shifted mask) and zeros elsewhere,
    so TRL's sum over the sequence and its masked mean over completion tokens (``"sft"``)
    both see exactly these values.
    """
    shifted = mask[:, 1:].bool()  # (N, T-1)
    first = shifted.int().argmax(dim=1)  # (N,)
    onehot = torch.nn.functional.one_hot(first, shifted.shape[1]).to(logps.dtype)
    return onehot * logps[:, None]


# -- the inputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> Any:
    gen = torch.Generator().manual_seed(7)

    def ids(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=gen).tolist()

    examples = [
        {"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
        for p, c, r in [(3, 4, 2), (1, 2, 5), (5, 1, 1), (2, 6, 3)]
    ]
    return build_preference_batch(examples, pad_id=PAD, eos_id=EOS)


@pytest.fixture
def logps() -> dict[str, Tensor]:
    """Per-sequence log-probabilities of 4 pairs (no ties: AOT sorts them)."""
    gen = torch.Generator().manual_seed(11)

    def draw(grad: bool) -> Tensor:
        values = -torch.rand(4, generator=gen, dtype=torch.float64) * 12 - 0.5
        return values.requires_grad_(grad)

    return {
        "policy_chosen": draw(True),
        "policy_rejected": draw(True),
        "ref_chosen": draw(False),
        "ref_rejected": draw(False),
    }


def trl_dpo(trainer: Any, batch: Any, logps: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    """TRL's DPO loss and logged metrics for these per-sequence log-probabilities."""
    policy = torch.cat([logps["policy_chosen"], logps["policy_rejected"]])
    ref = torch.cat([logps["ref_chosen"], logps["ref_rejected"]])
    mask = batch.completion_mask
    trainer.ref_model = FakeModel(lambda _: fake_outputs(place(ref, mask)))
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": mask,
    }
    loss = trainer._compute_loss(
        FakeModel(lambda _: fake_outputs(place(policy, mask))), inputs, return_outputs=False
    )
    mode = "train" if trainer.model.training else "eval"
    logged = {k: v[-1] for k, v in trainer._metrics[mode].items() if v}
    return loss, logged


def ours_dpo(batch: Any, logps: dict[str, Tensor], **kwargs: Any) -> Any:
    lengths = batch.completion_mask[:, 1:].sum(dim=1)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    return dpo_loss(
        logps["policy_chosen"],
        logps["policy_rejected"],
        logps["ref_chosen"],
        logps["ref_rejected"],
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        **kwargs,
    )


def grads(loss: Tensor, logps: dict[str, Tensor]) -> list[Tensor]:
    """d loss / d policy log-probs (zeros where unused, e.g. the rejected ones under "sft")."""
    leaves = [logps["policy_chosen"], logps["policy_rejected"]]
    found = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(found, leaves, strict=True)]


def assert_same(
    ours: Tensor, theirs: Tensor, logps: dict[str, Tensor], tol: dict[str, float] = TOL
) -> None:
    torch.testing.assert_close(ours.detach().double(), theirs.detach().double(), **tol)
    for a, b in zip(grads(ours, logps), grads(theirs, logps), strict=True):
        torch.testing.assert_close(a.double(), b.double(), **tol)


# -- DPO: every loss type TRL implements -------------------------------------------------------

SMOOTHED = {"robust": 0.2, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (id, TRL's DPOConfig settings, our dpo_loss arguments)
    *[
        (
            name,
            {"loss_type": [name], "label_smoothing": SMOOTHED.get(name, 0.0)},
            {"loss_type": name, "label_smoothing": SMOOTHED.get(name, 0.0)},
        )
        for name in DPO_LOSS_TYPES
    ],
    (
        "discopop-tau",
        {"loss_type": ["discopop"], "discopop_tau": 0.4},
        {"loss_type": "discopop", "discopop_tau": 0.4},
    ),
    (
        "rpo",
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.6]},
        {"loss_type": "sigmoid", "rpo_alpha": 0.6},
    ),
    (
        "mpo",
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    ),
    *[
        (
            f"{div}-{name}",
            {
                "loss_type": [name],
                "f_divergence_type": div,
                "label_smoothing": SMOOTHED.get(name, 0.0),
            },
            {"loss_type": name, "f_divergence": div, "label_smoothing": SMOOTHED.get(name, 0.0)},
        )
        for div in ("forward_kl", "js_divergence")
        for name in (
            "sigmoid",
            "ipo",
            "hinge",
            "robust",
            "sigmoid_norm",
            "discopop",
            "exo_pair",
            "sft",
        )
    ],
]


def test_every_trl_loss_type_is_covered(
    tmp_path: Path, tokenizer: Any, pairs_dataset: Any, batch: Any, logps: dict[str, Tensor]
) -> None:
    # TRL's own list, from the error its loss raises for an unknown loss type.
    trainer = dpo_trainer(tmp_path, tokenizer, pairs_dataset, beta=BETA)
    trainer.loss_types = ["no-such-loss"]
    with pytest.raises(ValueError, match="Unknown loss type") as info:
        trl_dpo(trainer, batch, logps)
    listed = str(info.value).split("Should be one of", 1)[1]
    assert set(re.findall(r"'(\w+)'", listed)) == set(DPO_LOSS_TYPES)


@pytest.mark.parametrize(("case", "settings", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_dpo_loss_equals_trl(
    tmp_path: Path,
    tokenizer: Any,
    pairs_dataset: Any,
    batch: Any,
    logps: dict[str, Tensor],
    case: str,
    settings: dict[str, Any],
    kwargs: dict[str, Any],
) -> None:
    trainer = dpo_trainer(tmp_path, tokenizer, pairs_dataset, beta=BETA, **settings)
    theirs, logged = trl_dpo(trainer, batch, logps)
    ours = ours_dpo(batch, logps, beta=BETA, **kwargs)
    assert_same(ours.loss, theirs, logps)
    values = ours.floats()
    for name in METRICS:
        assert values[name] == pytest.approx(logged[name], rel=1e-6, abs=1e-6), name


def test_alpha_divergence_equals_trl(
    tmp_path: Path, tokenizer: Any, pairs_dataset: Any, batch: Any, logps: dict[str, Tensor]
) -> None:
    # float32: TRL's exp clamp has no float64 entry.
    logps32 = {k: v.detach().float().requires_grad_(v.requires_grad) for k, v in logps.items()}
    for alpha in (0.5, 1.5):
        trainer = dpo_trainer(
            tmp_path,
            tokenizer,
            pairs_dataset,
            beta=BETA,
            loss_type=["sigmoid"],
            f_divergence_type="alpha_divergence",
            f_alpha_divergence_coef=alpha,
        )
        theirs, _ = trl_dpo(trainer, batch, logps32)
        ours = ours_dpo(batch, logps32, beta=BETA, f_divergence="alpha_divergence", f_alpha=alpha)
        assert_same(ours.loss, theirs, logps32, tol={"rtol": 1e-5, "atol": 1e-6})


def test_conservative_dpo_against_the_paper(batch: Any, logps: dict[str, Tensor]) -> None:
    # Mitchell 2023: L = -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta).
    eps = 0.15
    ours = ours_dpo(batch, logps, beta=BETA, label_smoothing=eps)
    delta = (logps["policy_chosen"] - logps["ref_chosen"]) - (
        logps["policy_rejected"] - logps["ref_rejected"]
    )
    sig = torch.sigmoid
    paper = (-(1 - eps) * torch.log(sig(BETA * delta)) - eps * torch.log(sig(-BETA * delta))).mean()
    assert_same(ours.loss, paper, logps)


def test_robust_dpo_against_the_paper(batch: Any, logps: dict[str, Tensor]) -> None:
    # Chowdhury et al. 2024, Eq. 8: [(1 - eps) l(Delta) - eps l(-Delta)] / (1 - 2 eps),
    # with l(x) = -log sigma(beta x).
    eps = 0.2
    ours = ours_dpo(batch, logps, beta=BETA, loss_type="robust", label_smoothing=eps)
    delta = (logps["policy_chosen"] - logps["ref_chosen"]) - (
        logps["policy_rejected"] - logps["ref_rejected"]
    )

    def ell(x: Tensor) -> Tensor:
        return -torch.log(torch.sigmoid(BETA * x))

    paper = (((1 - eps) * ell(delta) - eps * ell(-delta)) / (1 - 2 * eps)).mean()
    assert_same(ours.loss, paper, logps)


# -- the batch and the log-probabilities against TRL's --------------------------------------


def test_batch_layout_equals_trls_collator(batch: Any) -> None:
    gen = torch.Generator().manual_seed(7)

    def ids(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=gen).tolist()

    examples = [
        {"prompt_ids": ids(p), "chosen_ids": [*ids(c), EOS], "rejected_ids": [*ids(r), EOS]}
        for p, c, r in [(3, 4, 2), (1, 2, 5), (5, 1, 1), (2, 6, 3)]
    ]
    theirs = DataCollatorForPreference(pad_token_id=PAD)(examples)
    for name in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(batch, name), theirs[name]), name


def test_sequence_logprobs_equal_trls_fused_head(
    tmp_path: Path, tokenizer: Any, pairs_dataset: Any, batch: Any
) -> None:
    trainer = dpo_trainer(tmp_path, tokenizer, pairs_dataset, beta=BETA)
    model = trainer.model  # TRL patched its forward with the fused LM head
    model.float()
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    theirs = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    ).log_probs.sum(dim=1)  # (2B,)
    their_grads = torch.autograd.grad(theirs.sum(), list(model.parameters()))

    def logits_fn(ids: Tensor, *, attention_mask: Tensor, position_ids: Tensor | None) -> Tensor:
        out: Tensor = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
        return out

    def head_fn(ids: Tensor, *, attention_mask: Tensor, position_ids: Tensor | None) -> HeadInputs:
        hidden = model.model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
        return HeadInputs(hidden.last_hidden_state, model.lm_head.weight)

    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    for fn in (logits_fn, head_fn):
        ours = sequence_logprobs(fn, *args, chunk_size=3)
        torch.testing.assert_close(ours.sum, theirs.detach(), rtol=1e-5, atol=1e-5)
        our_grads = torch.autograd.grad(ours.sum.sum(), list(model.parameters()))
        for a, b in zip(our_grads, their_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_end_to_end_equals_trl(
    tmp_path: Path, tokenizer: Any, pairs_dataset: Any, batch: Any, loss_type: str
) -> None:
    # TRL's compute path with its own models (policy and a different reference) against
    # sequence_logprobs + dpo_loss on the same weights: loss and parameter gradients.
    smoothing = 0.1 if loss_type == "robust" else 0.0
    trainer = dpo_trainer(
        tmp_path,
        tokenizer,
        pairs_dataset,
        beta=BETA,
        loss_type=[loss_type],
        label_smoothing=smoothing,
    )
    policy, reference = trainer.model, trainer.ref_model
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": batch.completion_mask,
    }
    theirs = trainer._compute_loss(policy, inputs, return_outputs=False)
    their_grads = torch.autograd.grad(theirs, list(policy.parameters()))

    def run(model: Any) -> Callable[..., Tensor]:
        def fn(ids: Tensor, *, attention_mask: Tensor, position_ids: Tensor | None) -> Tensor:
            out: Tensor = model(
                input_ids=ids, attention_mask=attention_mask, use_cache=False
            ).logits
            return out

        return fn

    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    chosen, rejected = sequence_logprobs(run(policy), *args).chunk()
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logprobs(run(reference), *args).chunk()
    ours = dpo_loss(
        chosen.sum,
        rejected.sum,
        ref_chosen.sum,
        ref_rejected.sum,
        loss_type=loss_type,
        beta=BETA,
        label_smoothing=smoothing,
        chosen_lengths=chosen.count,
        rejected_lengths=rejected.count,
    )
    torch.testing.assert_close(ours.loss, theirs, rtol=1e-5, atol=1e-5)
    our_grads = torch.autograd.grad(ours.loss, list(policy.parameters()))
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- SimPO (CPOTrainer) and ORPO -----------------------------------------------------------------


def test_simpo_equals_trls_cpo_trainer(logps: dict[str, Tensor]) -> None:
    from trl.experimental.cpo import CPOTrainer

    chosen = logps["policy_chosen"] / 7  # mean log-probabilities per token
    rejected = logps["policy_rejected"] / 5
    nll = -(chosen.mean())
    for beta, gamma, eps, cpo_alpha in [(2.0, 1.0, 0.0, 0.0), (2.5, 0.7, 0.1, 0.3)]:
        trainer = SimpleNamespace(
            alpha=0.0,
            beta=beta,
            simpo_gamma=gamma,
            label_smoothing=eps,
            loss_type="simpo",
            accelerator=SimpleNamespace(device=chosen.device),
        )
        losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, chosen, rejected)
        theirs = losses.mean() + cpo_alpha * nll
        ours = simpo_loss(
            chosen,
            rejected,
            beta=beta,
            gamma=gamma,
            label_smoothing=eps,
            nll_loss=nll,
            nll_weight=cpo_alpha,
        )
        assert_same(ours.loss, theirs, logps)
        torch.testing.assert_close(ours.chosen_rewards, chosen_rewards, **TOL)
        torch.testing.assert_close(ours.rejected_rewards, rejected_rewards, **TOL)


def test_orpo_equals_trls_orpo_trainer(logps: dict[str, Tensor]) -> None:
    from trl.experimental.orpo import ORPOTrainer

    # Mean log-probabilities on both sides of -log 2 (the two branches of log(1 - e^x)).
    chosen = logps["policy_chosen"] / 20
    rejected = logps["policy_rejected"] / 9
    nll = -(chosen.mean())
    for beta in (0.1, 0.5):
        trainer = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=chosen.device))
        losses, c_rewards, _, ratio, log_odds = ORPOTrainer.odds_ratio_loss(
            trainer, chosen, rejected
        )
        theirs = nll - losses.mean()
        ours = orpo_loss(chosen, rejected, beta=beta, nll_loss=nll)
        assert_same(ours.loss, theirs, logps)
        # TRL computes ORPO in float32 (it casts the log-probabilities); ours keeps float64.
        torch.testing.assert_close(ours.metrics["log_odds_ratio"], ratio.detach().double(), **TOL)
        torch.testing.assert_close(
            ours.metrics["log_odds_chosen"], log_odds.detach().double(), **TOL
        )
        torch.testing.assert_close(ours.chosen_rewards, c_rewards.double(), **TOL)


# -- KTO ------------------------------------------------------------------------------------------


def kto_trainer(tmp: Path, tokenizer: Any, **settings: Any) -> Any:
    dataset = datasets.Dataset.from_list(
        [
            {"prompt": "w3 w4", "completion": " w5 w6", "label": True},
            {"prompt": "w8", "completion": " w9", "label": False},
        ]
    )
    args = trl.KTOConfig(
        output_dir=str(tmp),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=2,
        **settings,
    )
    return trl.KTOTrainer(
        model=llama(0),
        ref_model=llama(1),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


@pytest.mark.parametrize(
    ("loss_type", "kl_shift", "weights"),
    [("kto", 0.0, (1.0, 1.0)), ("kto", -30.0, (1.3, 0.6)), ("apo_zero_unpaired", 0.0, (1.0, 2.0))],
)
def test_kto_equals_trl(
    tmp_path: Path, tokenizer: Any, loss_type: str, kl_shift: float, weights: tuple[float, float]
) -> None:
    gen = torch.Generator().manual_seed(5)
    n = 6
    ids = torch.randint(2, VOCAB, (n, 7), generator=gen)
    mask = torch.ones_like(ids)
    completion_mask = torch.zeros_like(ids)
    completion_mask[:, 3:] = 1
    labels = torch.tensor([True, False, True, True, False, False])
    policy = (-torch.rand(n, generator=gen, dtype=torch.float64) * 10).requires_grad_()
    ref = -torch.rand(n, generator=gen, dtype=torch.float64) * 10
    policy_kl = (
        -torch.rand(n, generator=gen, dtype=torch.float64) * 10 + kl_shift
    )  # shift < 0: z0 clamps at 0
    ref_kl = -torch.rand(n, generator=gen, dtype=torch.float64) * 10
    kl_ids = ids.roll(1, dims=0)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "completion_mask": completion_mask,
        "label": labels,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": mask,
        "KL_completion_mask": completion_mask,
    }
    if loss_type == "apo_zero_unpaired":
        for key in ("KL_input_ids", "KL_attention_mask", "KL_completion_mask"):
            del batch[key]

    def outputs(values: Tensor, kl_values: Tensor) -> Callable[[dict[str, Any]], SimpleNamespace]:
        def pick(kwargs: dict[str, Any]) -> SimpleNamespace:
            is_kl = kwargs["input_ids"] is kl_ids
            return fake_outputs(place(kl_values if is_kl else values, completion_mask))

        return pick

    trainer = kto_trainer(
        tmp_path,
        tokenizer,
        beta=BETA,
        loss_type=loss_type,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    trainer.ref_model = FakeModel(outputs(ref, ref_kl))
    theirs = trainer._compute_loss(
        FakeModel(outputs(policy, policy_kl)), batch, return_outputs=False
    )
    mode = "train" if trainer.model.training else "eval"
    logged = {k: v[-1] for k, v in trainer._metrics[mode].items() if v}

    ours = kto_loss(
        policy,
        ref,
        labels,
        policy_kl_logps=policy_kl if loss_type == "kto" else None,
        ref_kl_logps=ref_kl if loss_type == "kto" else None,
        beta=BETA,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        loss_type=loss_type,  # type: ignore[arg-type]
    )
    torch.testing.assert_close(ours.loss, theirs.double(), **TOL)
    (g_ours,) = torch.autograd.grad(ours.loss, [policy])
    (g_theirs,) = torch.autograd.grad(theirs, [policy])
    torch.testing.assert_close(g_ours, g_theirs.double(), **TOL)
    values = ours.floats()
    for name in (
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ):
        assert values[name] == pytest.approx(logged[name], rel=1e-6, abs=1e-6), name
    if kl_shift < 0:
        assert values["kl"] == 0.0


# -- the reward model -------------------------------------------------------------------------


@pytest.mark.parametrize(("margin", "center"), [(False, None), (True, None), (True, 0.01)])
def test_reward_loss_equals_trl(
    tmp_path: Path, tokenizer: Any, margin: bool, center: float | None
) -> None:
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_labels=1,
            pad_token_id=PAD,
        )
    )
    dataset = datasets.Dataset.from_list(
        [{"chosen": "w3 w4 w5", "rejected": "w3 w6"}, {"chosen": "w7", "rejected": "w8 w9"}]
    )
    args = trl.RewardConfig(
        output_dir=str(tmp_path),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=2,
        center_rewards_coefficient=center,
    )
    trainer = trl.RewardTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer
    )

    gen = torch.Generator().manual_seed(3)
    chosen = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    rejected = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_()
    margins = torch.rand(5, generator=gen, dtype=torch.float64)
    inputs: dict[str, Any] = {
        "input_ids": torch.zeros(10, 3, dtype=torch.long),
        "attention_mask": torch.ones(10, 3, dtype=torch.long),
    }
    if margin:
        inputs["margin"] = margins
    scores = torch.cat([chosen, rejected])[:, None]  # (2B, 1), TRL's head output
    theirs = trainer.compute_loss(FakeModel(lambda _: SimpleNamespace(logits=scores)), inputs)
    mode = "train" if trainer.model.training else "eval"
    logged = {k: v[-1] for k, v in trainer._metrics[mode].items() if v}

    ours = reward_loss(
        chosen, rejected, margin=margins if margin else None, center_rewards_coefficient=center
    )
    pair = {"policy_chosen": chosen, "policy_rejected": rejected}
    assert_same(ours.loss, theirs, pair)
    values = ours.floats()
    for name in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert values[name] == pytest.approx(logged[name], rel=1e-6, abs=1e-6), name
