"""The worker processes of ``bench_grpo.py``: GRPO steps of each side, timed in a fresh process.

``python -m benchmarks._grpo_bench '<settings as JSON>'`` (from the repository root) builds
the sides it is asked for (``ours``: sampling with the fp32 policy itself, ``ours_auto``:
``rollout_dtype: auto``, a bf16 sampling copy where this CPU gains, ``trl``), runs their
steps, and prints one JSON line:
per side the step times split into generation and update (forward + loss, backward, AdamW),
the completions and completion tokens of each step, the loss and gradient norm, and the
process's peak resident memory (Linux ``VmHWM``: after the imports, after loading, while
training).

A step is driven by hand on both sides, from the same weights and the same prompts:

- ours: ``next()`` of the ``GRPOBatchSource`` of a ``lego.align.GRPOTrainer`` (lego-generate's
  ``rollout()``, the reward function, group advantages: the *generation*), then
  ``GRPOObjective`` (log-probs and the loss), ``backward``, ``AdamW.step`` and ``zero_grad``
  (the *update*);
- TRL: ``trainer._prepare_inputs(rows)`` of a ``trl.GRPOTrainer``
  (``_generate_and_score_completions`` with transformers' ``generate``, the reward function,
  advantages: the *generation*), then
  ``trainer.compute_loss``, ``backward`` and the same AdamW step (the *update*): what
  transformers' ``training_step`` does around them, minus its bookkeeping.

With ``"check": true`` (both sides in one process) our first generation is also scored by
TRL's ``_compute_loss`` on TRL's model before any step: the loss and the gradient norm must
equal ours (the same formula on the same batch).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._align_bench import peak_kib, reset_peak

PAD, EOS, UNK = 0, 1, 2
"""The word-level tokenizer's special ids (``bench_grpo.make_tokenizer``)."""

StepFn = Callable[[], dict[str, float]]


def parity_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    """The fraction of a completion's words with an even number (``w24`` is even): cheap, spread.

    Args:
        prompts: The prompts (unused).
        completions: The completions' texts, ``"w17 w2048 ..."``.
        **columns: Other dataset columns (unused).

    Returns:
        One reward in ``[0, 1]`` per completion.
    """
    out = []
    for completion in completions:
        numbers = [int(w[1:]) for w in str(completion).split() if w[1:].isdigit()]
        out.append(sum(1 for n in numbers if n % 2 == 0) / max(1, len(numbers)))
    return out


@dataclass
class Side:
    """One prepared GRPO step and what it records.

    Attributes:
        name: ``ours``, ``ours_auto`` or ``trl``.
        step: Runs one step; returns its timers and counts.
        trainable: Trainable parameters.
        records: One dictionary per step: ``generation_s``, ``forward_s`` (log-probs and loss),
            ``backward_s``, ``optimizer_s``, ``update_s``, ``step_s``, ``completions``,
            ``completion_tokens``, ``loss``, ``reward``.
    """

    name: str
    step: StepFn
    trainable: int
    records: list[dict[str, float]] = field(default_factory=list)

    def run(self) -> None:
        """One step."""
        self.records.append(self.step())


def _peer(name: str) -> Any:
    """A peer library (TRL, datasets, transformers), untyped here on purpose."""
    return importlib.import_module(name)


def _adamw(model: nn.Module, lr: float) -> tuple[torch.optim.AdamW, int]:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0), sum(p.numel() for p in params)


def _grad_norm(model: nn.Module) -> float:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class LegoTokenizer:
    """lego's ``Tokenizer`` protocol over the transformers tokenizer (the same ids)."""

    def __init__(self, hf: Any, vocab: int) -> None:
        self.hf = hf
        self.vocab = vocab

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))


def _hf_tokenizer(settings: Mapping[str, Any]) -> Any:
    return _peer("transformers").AutoTokenizer.from_pretrained(settings["tokenizer"])


def _rows(settings: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"prompt": p} for p in settings["prompts"]]


# -- ours ---------------------------------------------------------------------------------------


@dataclass
class OurSide:
    """Our trainer and the batch iterator of its source (for the check against TRL)."""

    trainer: Any
    batches: Iterator[dict[str, Tensor]]
    first: dict[str, Tensor] | None = None


def ours(
    settings: Mapping[str, Any],
    keep: dict[str, Any],
    *,
    name: str = "ours",
    rollout_dtype: str = "float32",
) -> Side:
    """lego-align's GRPO step (see the module docstring), sampling in ``rollout_dtype``."""
    from lego.align import GRPOConfig, GRPOTrainer
    from lego.arch import from_hf
    from lego.train import TrainConfig

    model = from_hf(settings["model"])
    trainer = GRPOTrainer(
        model=model,
        tokenizer=LegoTokenizer(_hf_tokenizer(settings), settings["vocab"]),
        train_data=_rows(settings),
        reward_funcs=[parity_reward],
        config=GRPOConfig(
            template="none",
            eos_token="<eos>",
            pad_token="<pad>",
            num_generations=settings["generations"],
            prompts_per_step=len(settings["prompts"]),
            max_prompt_length=256,
            max_completion_length=settings["new_tokens"],
            temperature=1.0,
            loss_type="dapo",
            beta=0.0,
            num_iterations=1,
            shuffle=False,
            seed=1,
            log_entropy=True,  # TRL's _compute_loss computes the entropy too
            rollout_dtype=rollout_dtype,  # type: ignore[arg-type]
        ),
        train=TrainConfig(
            out_dir=tempfile.mkdtemp(prefix="bench-grpo-ours-"),
            max_steps=1000,
            grad_accum=1,
            progress="none",
        ),
    )
    policy: nn.Module = trainer.model
    policy.train()
    objective = trainer.objective
    optimizer, trainable = _adamw(policy, settings["lr"])
    state = OurSide(trainer, iter(trainer.source))
    keep[name] = state
    sampler = trainer.source.sampler
    keep.setdefault("rollout_dtypes", {})[name] = (
        "float32 (the policy itself)" if sampler is None else str(sampler.dtype).split(".")[-1]
    )

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        batch = next(state.batches)  # rollout, rewards, advantages
        t1 = time.perf_counter()
        if state.first is None:
            state.first = batch
            check = keep.get("check") if name == "ours" else None
            if check is not None:
                check(batch)  # TRL scores this batch before our update changes the weights
            t1 = time.perf_counter()
        out = objective(policy, batch)
        loss = out.loss_sum / objective.units(batch)
        t2 = time.perf_counter()
        loss.backward()  # type: ignore[no-untyped-call]
        t3 = time.perf_counter()
        norm = _grad_norm(policy)
        t3b = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        mask = batch["completion_mask"]
        return {
            "generation_s": t1 - t0,
            "forward_s": t2 - t1,
            "backward_s": t3 - t2,
            "optimizer_s": t4 - t3b,
            "update_s": (t4 - t1) - (t3b - t3),
            "step_s": (t4 - t0) - (t3b - t3),
            "completions": float(mask.shape[0]),
            "completion_tokens": float(mask.sum()),
            "loss": float(loss.detach()),
            "grad_norm": norm,
            "reward": float(batch["stat/reward"]),
        }

    return Side(name, step, trainable)


def ours_auto(settings: Mapping[str, Any], keep: dict[str, Any]) -> Side:
    """Ours with ``rollout_dtype: auto`` (a bf16 sampling copy where this CPU gains)."""
    return ours(settings, keep, name="ours_auto", rollout_dtype="auto")


# -- TRL ----------------------------------------------------------------------------------------


def trl(settings: Mapping[str, Any], keep: dict[str, Any]) -> Side:
    """TRL's GRPO step without vLLM (see the module docstring)."""
    datasets, trl_lib, transformers = _peer("datasets"), _peer("trl"), _peer("transformers")

    g = settings["generations"]
    rows = _rows(settings)
    args = trl_lib.GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-trl-"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        use_vllm=False,
        gradient_checkpointing=False,
        learning_rate=settings["lr"],
        weight_decay=0.0,
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=len(rows) * g,
        gradient_accumulation_steps=1,
        num_generations=g,
        max_completion_length=settings["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        loss_type="dapo",
        beta=0.0,
        num_iterations=1,
        scale_rewards="group",
        mask_truncated_completions=False,
        log_completions=False,
        seed=1,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        settings["model"], dtype=torch.float32
    )
    trainer = trl_lib.GRPOTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=_hf_tokenizer(settings),
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' loop in training
    optimizer, trainable = _adamw(model, settings["lr"])
    # What the RepeatSampler hands one step: each prompt num_generations times in a row.
    generation_batch = [row for row in rows for _ in range(g)]
    keep["trl"] = trainer

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        inputs = trainer._prepare_inputs(list(generation_batch))  # generate, score, advantages
        t1 = time.perf_counter()
        loss = trainer.compute_loss(model, inputs)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        norm = _grad_norm(model)
        t3b = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        mask = inputs["completion_mask"]
        rewards = trainer._metrics["train"].get("reward") or [float("nan")]
        return {
            "generation_s": t1 - t0,
            "forward_s": t2 - t1,
            "backward_s": t3 - t2,
            "optimizer_s": t4 - t3b,
            "update_s": (t4 - t1) - (t3b - t3),
            "step_s": (t4 - t0) - (t3b - t3),
            "completions": float(mask.shape[0]),
            "completion_tokens": float(mask.sum()),
            "loss": float(loss.detach()),
            "grad_norm": norm,
            "reward": float(rewards[-1]),
        }

    return Side("trl", step, trainable)


def trl_on_our_batch(trainer: Any, batch: Mapping[str, Tensor]) -> dict[str, float]:
    """TRL's ``_compute_loss`` on our micro-batch: its loss and gradient norm (then cleared)."""
    n = batch["completion_mask"].shape[1]
    mask = batch["completion_mask"]
    inputs: dict[str, Any] = {
        "prompt_ids": batch["input_ids"][:, :-n],
        "prompt_mask": batch["attention_mask"][:, :-n],
        "completion_ids": batch["input_ids"][:, -n:],
        "completion_mask": mask,
        "advantages": batch["advantages"],
        "num_items_in_batch": mask.sum(),
    }
    if not bool(inputs["prompt_mask"].all()):
        raise RuntimeError("the prompts are left-padded: TRL would place them at other positions")
    model = trainer.model
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    norm = _grad_norm(model)
    model.zero_grad(set_to_none=True)
    return {"loss": float(loss.detach()), "grad_norm": norm}


# -- the process ---------------------------------------------------------------------------------


BUILDERS: dict[str, Callable[[Mapping[str, Any], dict[str, Any]], Side]] = {
    "ours": ours,
    "ours_auto": ours_auto,
    "trl": trl,
}


def _imports(names: Sequence[str]) -> None:
    """Import each side's libraries before the 'after imports' memory mark."""
    if "ours" in names or "ours_auto" in names:
        import lego.align
        import lego.arch
        import lego.train  # noqa: F401
    if "trl" in names:
        for name in ("datasets", "transformers", "trl"):
            _peer(name)


def _abba(sides: list[Side], rounds: int) -> Iterator[Side]:
    """Step order: one warm-up each, then ABBA rounds (A B B A ...)."""
    yield from sides
    for i in range(rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        yield from order
        yield from order[::-1]


def _close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(1e-6, abs(b))


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    settings: dict[str, Any] = json.loads(argv[1])
    torch.manual_seed(0)
    names: list[str] = settings["sides"]
    _imports(names)
    before = peak_kib()
    keep: dict[str, Any] = {}
    sides = [BUILDERS[name](settings, keep) for name in names]
    facts: dict[str, Any] = {}
    if settings.get("check"):

        def check(batch: dict[str, Tensor]) -> None:
            facts["trl_on_our_batch"] = trl_on_our_batch(keep["trl"], batch)

        keep["check"] = check
    loaded = peak_kib()
    reset_peak()
    settled = peak_kib()
    if settings.get("rounds"):  # interleaved: warm-up, then ABBA
        for side in _abba(sides, settings["rounds"]):
            side.run()
    else:  # one side, its steps in a row (the first is the warm-up)
        for side in sides:
            for _ in range(settings["steps"]):
                side.run()
    if settings.get("check"):
        first = sides[names.index("ours")].records[0]
        theirs = facts["trl_on_our_batch"]
        facts["ours_first"] = {"loss": first["loss"], "grad_norm": first["grad_norm"]}
        if not _close(first["grad_norm"], theirs["grad_norm"], 1e-4) or not (
            abs(first["loss"] - theirs["loss"]) <= 1e-5
        ):
            raise RuntimeError(
                f"TRL's loss on our batch differs: ours {facts['ours_first']}, TRL {theirs}"
            )
    if "rollout_dtypes" in keep:
        facts["rollout_dtypes"] = keep["rollout_dtypes"]
    if "ours_auto" in names:
        from lego.generate.precision import probe_bf16

        probe = probe_bf16()  # this process's measurement, made by ours_auto's "auto"
        facts["bf16_probe"] = {"float32_s": probe.float32_s, "bfloat16_s": probe.bfloat16_s}
    out = {
        "sides": {s.name: {"records": s.records, "trainable": s.trainable} for s in sides},
        "facts": facts,
        "before_kib": before,
        "loaded_kib": loaded,
        "settled_kib": settled,
        "peak_kib": peak_kib(),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
