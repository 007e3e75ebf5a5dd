"""The stage evaluation: figures against direct computations, resuming, the report, the curves.

A 2-layer, 64-wide lego-arch model with a tiny trained tokenizer is the "pretrained" model
(no ChatML tokens); the "sft" and "dpo" models are it with the vocabulary grown for ChatML
and perturbed weights, as a real chain would leave them. A dozen held-out rows.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import lego.arch
from lego.protocols import CompatibilityError, ConfigError, ModelConfig
from lego.protocols.chat import get_chat_template
from lego.protocols.layout import LEGO_TOKENIZER_FILE
from lego.recipes import pipeline_eval
from lego.recipes import pipeline_stages_eval as stages_eval
from lego.recipes.pipeline_stages_eval import (
    STAGES_KEY,
    StageEvalSpec,
    draw_stage_curves,
    evaluate_stages,
    stage_report_lines,
)
from lego.recipes.tuning import add_special_tokens, grow_vocabulary
from lego.tokenize import RegexBPETokenizer

CHATML = ("<|im_start|>", "<|im_end|>")
SPEC = StageEvalSpec(answers=4, max_new_tokens=6, batch_size=3)

QA = [
    {"prompt": "What does json.dumps do?", "completion": "Turn a value into text."},
    {"prompt": "What is len([1, 2])?", "completion": "2", "answer": "2"},
    {"prompt": "What does os.getcwd do?", "completion": "Return the current folder."},
    {"prompt": "What is sorted([3, 1])?", "completion": "[1, 3]", "answer": "[1, 3]"},
    {"prompt": "What does math.floor do?", "completion": "Round a number down."},
    {"prompt": "What is abs(-4)?", "completion": "4", "answer": "4"},
    {"prompt": "What does str.upper do | tell?", "completion": "Return the text in capitals."},
]
for _row in QA:
    _row.setdefault("answer", _row["completion"])
    _row["kind"] = "snippet" if _row["prompt"].startswith("What is") else "docstring"
PAIRS = [
    {"prompt": "What is len([1, 2])?", "chosen": "2", "rejected": "3", "corruption": "wrong_value"},
    {"prompt": "What is abs(-4)?", "chosen": "4", "rejected": "-4", "corruption": "wrong_value"},
    {
        "prompt": "What does os.getcwd do?",
        "chosen": "Return the current folder.",
        "rejected": "Return the folder.",
        "corruption": "truncated",
    },
    {
        "prompt": "What does math.floor do?",
        "chosen": "Round a number down.",
        "rejected": "Round a number up.",
        "corruption": "opposite",
    },
    {
        "prompt": "What does json.dumps do?",
        "chosen": "Turn a value into text.",
        "rejected": "Turn a text into value.",
        "corruption": "swapped",
    },
    {"prompt": "What is abs(-1)?", "chosen": "1", "rejected": "1", "corruption": "wrong_value"},
]


def _save(model: lego.arch.DecoderLM, tokenizer: RegexBPETokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save(folder / LEGO_TOKENIZER_FILE)
    return folder


def _perturbed(model: lego.arch.DecoderLM, seed: int) -> lego.arch.DecoderLM:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(0.05 * noise)
    return model


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run directory with a pretrained, an SFT and a DPO model, DPO's metrics log."""
    root = tmp_path_factory.mktemp("stages")
    text = " ".join(r["prompt"] + " " + r["completion"] for r in QA) * 8
    tokenizer = RegexBPETokenizer("gpt4")
    with warnings.catch_warnings():  # the text reaches fewer ids: fine here
        warnings.simplefilter("ignore")
        tokenizer.train(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    chat_tokenizer, added = add_special_tokens(tokenizer, CHATML)
    assert set(added) == set(CHATML)
    torch.manual_seed(0)
    base = lego.arch.build(
        "llama-tiny", vocab_size=tokenizer.vocab_size, context_length=64, rope_scaling=None
    )
    models = {"pretrained": _save(base, tokenizer, root / "model")}
    sft = _perturbed(grow_vocabulary(base, chat_tokenizer.vocab_size), 1)
    models["sft"] = _save(sft, chat_tokenizer, root / "sft" / "model")
    dpo = _perturbed(grow_vocabulary(base, chat_tokenizer.vocab_size), 2)
    models["dpo"] = _save(dpo, chat_tokenizer, root / "dpo" / "model")
    records = [
        {"step": 5, "split": "val", "val_rewards/accuracies": 0.5, "val_rewards/margins": 0.1},
        {"step": 10, "split": "val", "val_rewards/accuracies": 0.75, "val_rewards/margins": 0.3},
    ]
    (root / "dpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = evaluate_stages(
        run_dir=root,
        models=models,
        qa_test=QA,
        pairs_test=PAIRS,
        spec=SPEC,
        echo=lambda _: None,
    )
    return {"root": root, "models": models, "tokenizer": chat_tokenizer, "result": result}


def _reference_model(chain: dict[str, Any], name: str) -> lego.arch.DecoderLM:
    model = lego.arch.from_hf(chain["models"][name])
    vocab = chain["tokenizer"].vocab_size
    if model.config.vocab_size < vocab:
        model = grow_vocabulary(model, vocab)
    return model.eval()


def _answer_ids(
    tokenizer: RegexBPETokenizer, prompt: str, answer: str
) -> tuple[list[int], list[int]]:
    """The prompt and answer ids (answer text and ``<|im_end|>``), rendered by hand."""
    chat = get_chat_template("chatml")
    user = {"role": "user", "content": prompt}
    head = chat.encode(tokenizer, [user], add_generation_prompt=True)
    whole = chat.encode(tokenizer, [user, {"role": "assistant", "content": answer}])
    assert whole[: len(head)] == head
    end = whole.index(tokenizer.special_tokens["<|im_end|>"], len(head))
    return head, whole[len(head) : end + 1]


def _logprob(model: lego.arch.DecoderLM, prompt: list[int], answer: list[int]) -> list[float]:
    """``log p`` of each answer token from one forward pass over prompt + answer."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).double(), dim=-1)[0]  # (T, V)
    return [float(logp[len(prompt) - 1 + i, token]) for i, token in enumerate(answer)]


@pytest.mark.parametrize("name", ["pretrained", "sft"])
def test_answer_loss_equals_a_direct_computation(chain: dict[str, Any], name: str) -> None:
    model = _reference_model(chain, name)
    tokenizer = chain["tokenizer"]
    totals: dict[str, list[float]] = {}
    for row in QA:
        prompt, answer = _answer_ids(tokenizer, row["prompt"], row["completion"])
        logps = _logprob(model, prompt, answer)
        for key in ("all", row["kind"]):
            entry = totals.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            entry[0] -= sum(logps)
            entry[1] += len(logps)
            entry[2] -= sum(logps[:-1])  # without <|im_end|>
            entry[3] += len(logps) - 1
    measured = chain["result"]["parts"][name]["answer_loss"]
    assert measured["rows"] == len(QA)
    assert measured["dropped"] == 0
    assert measured["tokens"] == totals["all"][1]
    assert measured["loss"] == pytest.approx(totals["all"][0] / totals["all"][1], abs=1e-4)
    assert measured["text_loss"] == pytest.approx(totals["all"][2] / totals["all"][3], abs=1e-4)
    for kind in ("docstring", "snippet"):
        one = measured["by_kind"][kind]
        assert one["loss"] == pytest.approx(totals[kind][0] / totals[kind][1], abs=1e-4)
        assert one["tokens"] == totals[kind][1]


def test_preference_accuracy_equals_the_direct_count(chain: dict[str, Any]) -> None:
    model = _reference_model(chain, "sft")
    tokenizer = chain["tokenizer"]
    margins: dict[str, list[float]] = {}
    per_token: list[float] = []
    for pair in PAIRS:
        if pair["chosen"] == pair["rejected"]:
            continue
        prompt, chosen = _answer_ids(tokenizer, pair["prompt"], pair["chosen"])
        _, rejected = _answer_ids(tokenizer, pair["prompt"], pair["rejected"])
        good = _logprob(model, prompt, chosen)
        bad = _logprob(model, prompt, rejected)
        margin = sum(good) - sum(bad)
        per_token.append(sum(good) / len(good) - sum(bad) / len(bad))
        for key in ("all", pair["corruption"]):
            margins.setdefault(key, []).append(margin)
    measured = chain["result"]["parts"]["sft"]["preference"]
    everything = margins["all"]
    assert measured["accuracy_per_token"] == pytest.approx(
        sum(m > 0 for m in per_token) / len(per_token)
    )
    assert measured["pairs"] == len(everything) == len(PAIRS) - 1
    assert measured["identical"] == 1
    assert measured["correct"] == sum(m > 0 for m in everything)
    assert measured["accuracy"] == pytest.approx(sum(m > 0 for m in everything) / len(everything))
    assert measured["margin"] == pytest.approx(sum(everything) / len(everything), abs=1e-4)
    for kind, values in margins.items():
        if kind != "all":
            one = measured["by_corruption"][kind]
            assert one["pairs"] == len(values)
            assert one["accuracy"] == pytest.approx(sum(m > 0 for m in values) / len(values))


def test_answers_exact_matches_and_summaries(chain: dict[str, Any]) -> None:
    result = chain["result"]
    assert result["complete"] is True
    assert list(result["models"]) == ["pretrained", "sft", "dpo"]
    assert [r["row"] for r in result["rows"]] == [0, 1, 2, 3]  # alternately per kind
    snippets = [r for r in QA if r["kind"] == "snippet"]
    for name in ("pretrained", "sft", "dpo"):
        answers = result["parts"][name]["answers"]
        assert answers["exact_rows"] == len(snippets)
        assert 0 <= answers["exact_correct"] <= len(snippets)
        assert sorted(answers["table"]) == ["0", "1", "2", "3"]
    assert result["dpo"] == {
        "step": 10,
        "val_rewards/accuracies": 0.75,
        "val_rewards/margins": 0.3,
    }
    assert result["grpo"] is None
    written = json.loads((chain["root"] / pipeline_eval.EVAL_FILE).read_text())
    assert written[STAGES_KEY]["parts"] == json.loads(json.dumps(result["parts"]))


class _Favours(torch.nn.Module):
    """A causal LM that puts every position's mass on a set of tokens."""

    def __init__(self, vocab_size: int, favoured: set[int]) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context_length=64)
        row = torch.zeros(vocab_size)
        row[sorted(favoured)] = 20.0
        self.register_buffer("row", row)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.row.expand(*input_ids.shape, -1)  # (B, T, V)


@pytest.mark.parametrize(("side", "expected"), [("chosen", 1.0), ("rejected", 0.0)])
def test_a_model_built_to_favour_one_side_scores_as_constructed(
    chain: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    side: str,
    expected: float,
) -> None:
    tokenizer = chain["tokenizer"]
    pairs = [
        {"prompt": f"Pick {i}.", "chosen": "yes", "rejected": "no", "corruption": "x"}
        for i in range(3)
    ]
    chosen_ids = set(tokenizer.encode("yes"))
    rejected_ids = set(tokenizer.encode("no"))
    assert not chosen_ids & rejected_ids
    favoured = chosen_ids if side == "chosen" else rejected_ids
    fake = _Favours(tokenizer.vocab_size, favoured)
    monkeypatch.setattr(stages_eval, "_open_model", lambda path, device: (fake, tokenizer))
    result = evaluate_stages(
        run_dir=tmp_path,
        models={"sft": chain["models"]["sft"]},
        qa_test=QA[:2],
        pairs_test=pairs,
        spec=SPEC,
        echo=lambda _: None,
    )
    preference = result["parts"]["sft"]["preference"]
    assert preference["pairs"] == 3
    assert preference["accuracy"] == expected
    assert (preference["margin"] > 10) == (expected == 1.0)


def _counting(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(stages_eval, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(stages_eval, name, counted)
    return counts


MEASURES = ["_open_model", "_answer_loss", "_preference", "_answers"]


def test_an_interrupted_evaluation_resumes_with_only_the_missing_parts(
    chain: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = {n: chain["models"][n] for n in ("pretrained", "sft")}
    eval_file = tmp_path / pipeline_eval.EVAL_FILE
    pretraining = {"perplexity": {"mean_nll": 1.5}}
    pipeline_eval.write_eval_file(eval_file, {"model": {"sha256": "x"}, "parts": pretraining})

    def run() -> dict[str, Any]:
        return evaluate_stages(
            run_dir=tmp_path, models=models, qa_test=QA, pairs_test=PAIRS, spec=SPEC, echo=print
        )

    real = stages_eval._preference
    calls = {"n": 0}

    def stop_at_the_second(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(stages_eval, "_preference", stop_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            run()
    kept = json.loads(eval_file.read_text())
    assert kept["parts"] == pretraining  # the pretrained model's evaluation is untouched
    assert sorted(kept[STAGES_KEY]["parts"]["pretrained"]) == [
        "answer_loss",
        "answers",
        "preference",
        "sha256",
    ]
    assert sorted(kept[STAGES_KEY]["parts"]["sft"]) == ["answer_loss", "sha256"]
    assert kept[STAGES_KEY]["complete"] is False

    with monkeypatch.context() as patch:
        counts = _counting(patch, MEASURES)  # type: ignore[arg-type]
        resumed = run()
    assert counts == {"_open_model": 1, "_answer_loss": 0, "_preference": 1, "_answers": 1}
    assert resumed["complete"] is True
    assert resumed["parts"]["sft"]["answer_loss"] == kept[STAGES_KEY]["parts"]["sft"]["answer_loss"]
    assert resumed["parts"]["sft"]["preference"] == chain["result"]["parts"]["sft"]["preference"]

    with monkeypatch.context() as patch:
        counts = _counting(patch, MEASURES)  # type: ignore[arg-type]
        run()
    assert counts == dict.fromkeys(MEASURES, 0)  # finished: nothing is loaded again

    # the pipeline's own evaluation record keeps the stages part when it writes
    record = pipeline_eval._Record(eval_file, {"sha256": "y"}, {"other": 1})
    record.write()
    assert json.loads(eval_file.read_text())[STAGES_KEY]["complete"] is True

    # a model whose weights changed is measured again, the others are not
    changed = tmp_path / "sft-changed"
    model = _perturbed(lego.arch.from_hf(models["sft"]), 3)
    _save(model, chain["tokenizer"], changed)
    models["sft"] = changed
    with monkeypatch.context() as patch:
        counts = _counting(patch, MEASURES)  # type: ignore[arg-type]
        again = run()
    assert counts == {"_open_model": 1, "_answer_loss": 1, "_preference": 1, "_answers": 1}
    assert again["parts"]["sft"]["answer_loss"] != resumed["parts"]["sft"]["answer_loss"]


def test_report_lines_read_the_figures(chain: dict[str, Any]) -> None:
    result = chain["result"]
    whole = json.loads((chain["root"] / pipeline_eval.EVAL_FILE).read_text())
    lines = stage_report_lines(whole, times={"pretrained": 12.0, "sft": 3.4})
    text = "\n".join(lines)
    assert lines[0] == "## Stages"
    assert "| SFT | 3 |" in text
    parts = result["parts"]
    for name in ("pretrained", "sft", "dpo"):
        assert f"{parts[name]['answer_loss']['loss']:.3f}" in text
        assert f"{parts[name]['preference']['accuracy']:.3f}" in text
        assert f"{parts[name]['answers']['exact_correct']}/3" in text
    before, after = parts["pretrained"]["answer_loss"]["loss"], parts["sft"]["answer_loss"]["loss"]
    verb = "lowered" if after < before else "did not lower"
    assert f"SFT {verb} the held-out answer loss from {before:.3f} to {after:.3f}" in text
    assert "chance, 0.5" in text
    a, b = (parts[n]["preference"]["accuracy_per_token"] for n in ("sft", "dpo"))
    verb = "raised" if b > a else "did not raise"
    assert f"DPO {verb} held-out preference accuracy (per token) from {a:.3f} to {b:.3f}" in text
    sa, sb = (parts[n]["preference"]["accuracy"] for n in ("sft", "dpo"))
    assert f"by sums of log-probs from {sa:.3f} to {sb:.3f}" in text
    for kind, figures in parts["dpo"]["preference"]["by_corruption"].items():
        cell = f"{figures['accuracy_per_token']:.3f} / {figures['accuracy']:.3f}"
        assert f"| … {kind} pairs (per token / sums) |" in text
        assert cell in text, kind
    assert "accuracy 0.750, margin 0.300" in text  # DPO's own last validation
    table = [line for line in lines if line.startswith("| What does str.upper do")]
    assert not table  # the fifth question is not in the table of four
    assert "| What does json.dumps do? | Turn a value into text. |" in text


def test_report_cells_are_escaped() -> None:
    evaluation = {
        "models": {"sft": {}},
        "parts": {"sft": {"answers": {"table": {"0": "a | b\n<tag> `x`"}}}},
        "rows": [{"row": 0, "prompt": "What | is?", "reference": ""}],
    }
    text = "\n".join(stage_report_lines(evaluation))
    assert "| What \\| is? | *(empty)* | a \\| b<br>&lt;tag&gt; \\`x\\` |" in text


def _metrics(folder: Path, records: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _steps(**values: float) -> Iterator[dict[str, Any]]:
    for step in range(1, 4):
        yield {"step": step, "split": "train", **{k: v / step for k, v in values.items()}}


def test_stage_curves_are_drawn_from_the_metrics_logs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = _metrics(tmp_path, [*_steps(loss=4.0), {"step": 3, "split": "val", "val_loss": 3.0}])
    dpo_train = _steps(loss=0.7, **{"rewards/margins": 0.1, "rewards/accuracies": 0.5})
    dpo_val = {"step": 3, "split": "val", "val_rewards/accuracies": 0.8, "val_loss": 0.6}
    stages = {
        "pretrained": run,
        "sft": _metrics(tmp_path / "sft", list(_steps(loss=2.0))),
        "dpo": _metrics(tmp_path / "dpo", [*dpo_train, dpo_val]),
        "grpo": _metrics(
            tmp_path / "grpo",
            [*_steps(reward=0.5), {"step": 0, "split": "val", "val_accuracy": 0.2}],
        ),
        "missing": tmp_path / "nothing-here",
    }
    image = draw_stage_curves(run_dir=tmp_path, stages=stages)
    assert image == tmp_path / "stages.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert draw_stage_curves(run_dir=tmp_path, stages={"x": tmp_path / "none"}) is None


def test_spec_checks_its_sizes() -> None:
    assert StageEvalSpec().answers == 6
    for bad in ({"answers": -1}, {"max_new_tokens": 0}, {"batch_size": 0}, {"enabled": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            StageEvalSpec.from_dict(bad)
    assert pipeline_eval.EvalSpec.from_dict({"stages": {"answers": 2}}).stages.answers == 2


def test_grpo_accuracy_before_and_after_reaches_the_report(
    chain: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = chain["tokenizer"]
    fake = _Favours(tokenizer.vocab_size, set(tokenizer.encode("yes")))
    monkeypatch.setattr(stages_eval, "_open_model", lambda path, device: (fake, tokenizer))
    _metrics(
        tmp_path / "grpo",
        [
            {"step": 0, "split": "val", "val_accuracy": 0.25},
            {"step": 8, "split": "val", "val_accuracy": 0.625},
        ],
    )
    result = evaluate_stages(
        run_dir=tmp_path,
        models={"sft": chain["models"]["sft"], "grpo": chain["models"]["dpo"]},
        qa_test=QA[:3],
        pairs_test=PAIRS[:2],
        spec=SPEC,
        echo=lambda _: None,
    )
    assert result["grpo"] == {"before": 0.25, "after": 0.625}
    assert result["dpo"] is None  # no DPO stage ran
    text = "\n".join(stage_report_lines(result))
    assert "| GRPO task: held-out accuracy before → after |  | 0.250 → 0.625 |" in text
    assert "went from 0.250 to 0.625" in text


def test_a_model_of_another_tokenizer_is_refused(chain: dict[str, Any], tmp_path: Path) -> None:
    other = RegexBPETokenizer("gpt4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.train("completely different words " * 30, vocab_size=280)
    stranger, _ = add_special_tokens(other, ["<|endoftext|>", *CHATML])
    torch.manual_seed(1)
    model = lego.arch.build(
        "llama-tiny", vocab_size=stranger.vocab_size, context_length=64, rope_scaling=None
    )
    folder = _save(model, stranger, tmp_path / "stranger")
    eval_file = tmp_path / pipeline_eval.EVAL_FILE
    with pytest.raises(CompatibilityError, match="not the one the other stages"):
        evaluate_stages(
            run_dir=tmp_path,
            models={"sft": chain["models"]["sft"], "dpo": folder},
            qa_test=QA[:2],
            pairs_test=PAIRS[:1],
            spec=SPEC,
            echo=lambda _: None,
        )
    assert not eval_file.exists()  # refused before any model was measured
