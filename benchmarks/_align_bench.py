"""The worker processes of ``bench_align.py``: one training step per side, timed in a fresh process.

``python benchmarks/_align_bench.py '<settings as JSON>'`` builds the sides it is asked for
(``ours-lora``, ``ours-full``, ``trl-peft``, ``trl-default`` for DPO; ``ours`` and ``trl`` for
SFT), runs their steps, and prints one JSON line: per side the step times, losses, metrics,
trainable parameters and tokens per step, and the process's peak resident memory (Linux
``VmHWM``: after the imports, after loading, and while training).

A side is one training step on a fixed batch, driven by hand on both sides so that they do
the same work:

- ours: the lego-align objective (``DPOObjective`` / ``SFTObjective``) on a lego-arch model
  (``from_hf``, the adapter attached with ``lego.peft.load_adapter``), ``backward``, then
  ``torch.optim.AdamW.step`` and ``zero_grad``;
- TRL: ``trainer.training_step(trainer.model, inputs)`` of a ``trl.DPOTrainer`` /
  ``trl.SFTTrainer`` built on transformers' model from the same directory (its
  ``compute_loss`` and ``backward``), then the same AdamW step.

Both sides start from the same weights and the same adapter (written once by the parent),
and their batches are checked before any step: ours equals TRL's collated DPO batch token
for token; for SFT, TRL's model scores our packed batch with the loss ours computes.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import gc
import importlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from safetensors.torch import load_file

RANK = 16
ALPHA = 32
StepFn = Callable[[], tuple[float, dict[str, float]]]


def peak_kib() -> int:
    """The process's peak resident set (``VmHWM``) in KiB, 0 where /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> None:
    """Return freed memory to the system and restart the peak (Linux ``clear_refs`` 5)."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


@dataclass
class Side:
    """One prepared training step and what it records.

    Attributes:
        name: ``ours-lora``, ``trl-peft``, ...
        step: Runs one step; returns the loss and the logged metrics.
        trainable: Trainable parameters.
        tokens: Real (non-padding) positions of the batch.
        facts: What the side found about its own setup (TRL's reference model...).
        times: Seconds per step, in order.
        losses: Loss per step, in order.
        metrics: The metrics of each step, in order.
        module: The trained model (for profiles: its parameters are not activations).
    """

    name: str
    step: StepFn
    trainable: int
    tokens: int
    facts: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    module: torch.nn.Module | None = None

    def run(self) -> None:
        """One timed step."""
        start = time.perf_counter()
        loss, metrics = self.step()
        self.times.append(time.perf_counter() - start)
        self.losses.append(loss)
        self.metrics.append(metrics)

    def report(self) -> dict[str, Any]:
        return {
            "times": self.times,
            "losses": self.losses,
            "metrics": self.metrics,
            "trainable": self.trainable,
            "tokens": self.tokens,
            "facts": self.facts,
        }


def _peer(name: str) -> Any:
    """A peer library (TRL, datasets, PEFT, transformers), untyped here on purpose."""
    return importlib.import_module(name)


def _adamw(model: torch.nn.Module, lr: float) -> tuple[torch.optim.AdamW, int]:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0), sum(p.numel() for p in params)


# -- ours ---------------------------------------------------------------------------------------


def _our_model(settings: dict[str, Any], lora: bool) -> torch.nn.Module:
    from lego.arch import from_hf
    from lego.peft import load_adapter

    model: torch.nn.Module = from_hf(settings["model"])
    if lora:
        model = load_adapter(model, settings["adapter"])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in name)
    return model.train()


def ours_dpo(settings: dict[str, Any], name: str) -> Side:
    """lego-align's DPO step: the reference is the disabled adapter or a frozen copy."""
    from lego.align import DPOObjective

    batch = load_file(settings["batch"])  # input_ids, attention_mask, completion_mask, position_ids
    lora = name == "ours-lora"
    model = _our_model(settings, lora)
    if lora:
        objective = DPOObjective(loss_type="sigmoid", beta=settings["beta"], adapter=model)  # type: ignore[arg-type]
    else:  # what DPOTrainer's reference="copy" does
        reference = copy.deepcopy(model).requires_grad_(False).eval()
        objective = DPOObjective(loss_type="sigmoid", beta=settings["beta"], reference=reference)
    optimizer, trainable = _adamw(model, settings["lr"])
    pairs = int(batch["input_ids"].shape[0]) // 2

    def step() -> tuple[float, dict[str, float]]:
        out = objective(model, batch)
        loss = out.loss_sum / pairs
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), {k: float(v) / pairs for k, v in out.metrics.items()}

    tokens = int(batch["attention_mask"].sum())
    facts = {"reference": "adapter" if lora else "copy"}
    return Side(name, step, trainable, tokens, facts, module=model)


def ours_sft(settings: dict[str, Any]) -> Side:
    """lego-align's SFT step on packed rows, as ``SFTTrainer(packing=True)`` runs it.

    Documents are kept apart when the model takes ``document_ids`` (as ``SFTTrainer``
    decides); otherwise they attend across (``cross_document_attention: true``).
    """
    from lego.align import SFTObjective, accepts_document_ids

    batch = load_file(settings["batch"])  # input_ids, labels, attention_mask, position_ids, ...
    model = _our_model(settings, lora=True)
    apart = accepts_document_ids(model)
    objective = SFTObjective(document_ids=apart)
    optimizer, trainable = _adamw(model, settings["lr"])

    def step() -> tuple[float, dict[str, float]]:
        out = objective(model, batch)
        loss = out.loss_sum / out.tokens
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), {"trained_tokens": float(out.tokens)}

    tokens = int(batch["attention_mask"].sum())
    return Side("ours", step, trainable, tokens, {"documents_apart": apart}, module=model)


# -- TRL ----------------------------------------------------------------------------------------


def _peft_config() -> Any:
    return _peer("peft").LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _load_adapter_into(peft_model: Any, adapter: str) -> None:
    """Give TRL's freshly made adapter the weights ours loads (PEFT's file, PEFT's loader)."""
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    result = _peer("peft").set_peft_model_state_dict(peft_model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise RuntimeError(
            f"adapter not loaded into PEFT: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )


def _trl_common(settings: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments both TRL trainers share: fp32, no checkpointing, no logging."""
    return {
        "output_dir": tempfile.mkdtemp(prefix="bench-align-trl-"),
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "learning_rate": settings["lr"],
        "weight_decay": 0.0,
        "save_strategy": "no",
        "disable_tqdm": True,
    }


def _hf_model(settings: dict[str, Any]) -> Any:
    return _peer("transformers").AutoModelForCausalLM.from_pretrained(
        settings["model"], dtype=torch.float32
    )


def _tokenizer(settings: dict[str, Any]) -> Any:
    return _peer("transformers").AutoTokenizer.from_pretrained(settings["tokenizer"])


def _records(settings: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(Path(settings["records"]).read_text("utf-8"))
    return records


def trl_dpo(settings: dict[str, Any], name: str) -> Side:
    """TRL's DPOTrainer step: with PEFT (``trl-peft``) or set up as TRL does (``trl-default``)."""
    datasets, trl = _peer("datasets"), _peer("trl")

    records = _records(settings)
    args = trl.DPOConfig(
        **_trl_common(settings),
        per_device_train_batch_size=len(records),
        beta=settings["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        max_length=settings["seq"],
    )
    peft = name == "trl-peft"
    trainer = trl.DPOTrainer(
        model=_hf_model(settings),
        args=args,
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=_tokenizer(settings),
        peft_config=_peft_config() if peft else None,
    )
    model = trainer.model
    facts: dict[str, Any] = {"ref_model": type(trainer.ref_model).__name__}
    if peft:
        _load_adapter_into(model, settings["adapter"])
        facts["adapters"] = sorted(model.peft_config)
    else:
        policy = {p.data_ptr() for p in model.parameters()}
        facts["ref_shares_weights"] = any(
            p.data_ptr() in policy for p in trainer.ref_model.parameters()
        )
    facts["peft_model"] = isinstance(model, _peer("peft").PeftModel)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    ours = load_file(settings["batch"])
    for key in ("input_ids", "attention_mask", "completion_mask"):
        if not torch.equal(inputs[key], ours[key]):
            raise RuntimeError(f"TRL's collated {key} differs from ours")
    trainer.current_gradient_accumulation_steps = 1  # set by train(); one micro-batch a step
    optimizer, trainable = _adamw(model, settings["lr"])

    def step() -> tuple[float, dict[str, float]]:
        loss = trainer.training_step(model, dict(inputs))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logged = trainer._metrics["train"]
        return float(loss), {k: float(v[-1]) for k, v in logged.items() if v}

    tokens = int(inputs["attention_mask"].sum())
    return Side(name, step, trainable, tokens, facts, module=model)


def trl_sft(settings: dict[str, Any]) -> Side:
    """TRL's SFTTrainer step on its own packed batch (``packing=True``: BFD, padding-free)."""
    datasets, trl = _peer("datasets"), _peer("trl")

    args = trl.SFTConfig(
        **_trl_common(settings),
        per_device_train_batch_size=settings["rows"],
        packing=True,
        max_length=settings["seq"],
        completion_only_loss=True,
        eos_token="<eos>",
        pad_token="<pad>",
    )
    trainer = trl.SFTTrainer(
        model=_hf_model(settings),
        args=args,
        train_dataset=datasets.Dataset.from_list(_records(settings)),
        processing_class=_tokenizer(settings),
        peft_config=_peft_config(),
    )
    model = trainer.model
    _load_adapter_into(model, settings["adapter"])
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    fullest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: settings["rows"]]
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in fullest])

    # The same weights and the same loss: TRL's model on *our* packed batch gives our loss,
    # with documents kept apart (no attention mask: transformers splits the rows where the
    # positions restart) or attending across them (the attention mask given).
    ours = load_file(settings["batch"])
    on_ours = {}
    with torch.no_grad():
        for apart in (True, False):
            logits = model(
                input_ids=ours["input_ids"],
                attention_mask=None if apart else ours["attention_mask"],
                position_ids=ours["position_ids"],
                use_cache=False,
            ).logits
            on_ours["apart" if apart else "across"] = float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    ours["labels"].reshape(-1),
                    ignore_index=-100,
                )
            )
            del logits
    facts = {
        "loss_on_our_batch": on_ours,
        "documents": int((inputs["position_ids"] == 0).sum()),
        "padding_free": "attention_mask" not in inputs,
        "batch_shape": list(inputs["input_ids"].shape),
    }
    trainer.current_gradient_accumulation_steps = 1  # set by train(); one micro-batch a step
    optimizer, trainable = _adamw(model, settings["lr"])

    def step() -> tuple[float, dict[str, float]]:
        loss = trainer.training_step(model, dict(inputs))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trained = float((inputs["labels"] != -100).sum())
        return float(loss), {"trained_tokens": trained}

    tokens = int(inputs["input_ids"].numel())  # padding-free: every position is a real token
    return Side("trl", step, trainable, tokens, facts, module=model)


def trl_reference_facts(settings: dict[str, Any]) -> dict[str, Any]:
    """What TRL's DPOTrainer takes as the reference for each way of passing a LoRA model."""
    datasets, peft, trl = _peer("datasets"), _peer("peft"), _peer("trl")

    records = _records(settings)
    facts: dict[str, Any] = {}

    def trainer(model: Any, peft_config: Any = None) -> Any:
        args = trl.DPOConfig(
            **_trl_common(settings), per_device_train_batch_size=len(records), max_length=None
        )
        return trl.DPOTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(records),
            processing_class=_tokenizer(settings),
            peft_config=peft_config,
        )

    with_config = trainer(_hf_model(settings), _peft_config())
    facts["peft_config"] = {
        "ref_model": type(with_config.ref_model).__name__,
        "adapters": sorted(with_config.model.peft_config),
    }
    del with_config
    wrapped = peft.get_peft_model(_hf_model(settings), _peft_config())
    with_model = trainer(wrapped)
    facts["peft_model"] = {
        "ref_model": type(with_model.ref_model).__name__,
        "adapters": sorted(with_model.model.peft_config),
    }
    del with_model, wrapped
    plain = trainer(_hf_model(settings))
    defaults = {f.name: f.default for f in dataclasses.fields(trl.DPOConfig)}
    facts["plain_model"] = {
        "ref_model": type(plain.ref_model).__name__,
        "ref_is_policy": plain.ref_model is plain.model,
        "gradient_checkpointing_default": defaults["gradient_checkpointing"],
        "bf16_default": defaults["bf16"],  # None: bf16 unless fp16
        "learning_rate_default": defaults["learning_rate"],
    }
    return facts


# -- the process ---------------------------------------------------------------------------------


BUILDERS: dict[str, Callable[[dict[str, Any]], Side]] = {
    "ours-lora": lambda s: ours_dpo(s, "ours-lora"),
    "ours-full": lambda s: ours_dpo(s, "ours-full"),
    "trl-peft": lambda s: trl_dpo(s, "trl-peft"),
    "trl-default": lambda s: trl_dpo(s, "trl-default"),
    "ours": ours_sft,
    "trl": trl_sft,
}


def _imports(names: list[str]) -> None:
    """Import each side's libraries before the 'after imports' memory mark."""
    import lego.align
    import lego.arch
    import lego.peft  # noqa: F401

    if any(n.startswith("trl") for n in names):
        for name in ("datasets", "peft", "transformers", "trl"):
            _peer(name)


def _abba(sides: list[Side], rounds: int) -> Iterator[Side]:
    """Step order: one warm-up each, then ABBA rounds (A B B A ...)."""
    yield from sides
    for i in range(rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            yield side
        for side in order[::-1]:
            yield side


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    settings: dict[str, Any] = json.loads(argv[1])
    torch.manual_seed(0)
    if settings["role"] == "trl-reference":
        print(json.dumps({"facts": trl_reference_facts(settings)}))
        return 0
    names: list[str] = settings["sides"]
    _imports(names)
    before = peak_kib()
    sides = [BUILDERS[name](settings) for name in names]
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
    out = {
        "sides": {side.name: side.report() for side in sides},
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
