"""The pipeline's stage evaluation: the pretrained, SFT, DPO and GRPO models side by side.

After the later stages ran,
[`evaluate_stages()`][lego.recipes.pipeline_stages_eval.evaluate_stages] measures every
model of the chain on the same held-out rows and writes the figures into ``eval.json``
(its ``stages`` part);
[`stage_report_lines()`][lego.recipes.pipeline_stages_eval.stage_report_lines] turns them
into the report's "Stages" section and
[`draw_stage_curves()`][lego.recipes.pipeline_stages_eval.draw_stage_curves] draws
``stages.png``, one row of panels per stage from its ``metrics.jsonl``.

The measurements, for each model (natural logarithms throughout):

- **Held-out answer loss**: every question of ``qa_test`` is rendered as the SFT stage
  trains on it (lego-align's ``SFTDataset``: the prompt as a user turn of the chat
  template, the completion as the assistant turn, lego-data's ``encode_segments``); the
  answer tokens are the completion's tokens and the end-of-turn token that closes it. The
  loss is ``-sum(log p(answer token | everything before it)) / (number of answer
  tokens)`` over all rows (a token-weighted mean, as the SFT trainer's loss), and the same
  over the rows of each ``kind``. The same without the end-of-turn token ("answer text")
  is given too: the pretrained model has never seen that token, so its part of the loss
  says nothing about the answers themselves.
- **Held-out preference accuracy**: every pair of ``pairs_test`` is rendered as the DPO
  stage trains on it (lego-data's ``PreferenceDataset``: the prompt a user turn, each
  response an assistant turn up to its end-of-turn token); the pair counts as right when the
  chosen response has the higher mean log-probability per response token (the headline
  figure, ``accuracy_per_token``), and, as DPO compares them, when
  ``log p(chosen | prompt) > log p(rejected | prompt)`` (sums over the response tokens,
  ``accuracy``); the mean margin is the mean difference of the sums; all of them also per
  ``corruption``. Sums favour the shorter response (any language model gives a
  ``truncated`` answer a higher sum than the whole one, nearly always), which is why the
  headline is per token, as lm-eval's length-normalised ``acc_norm`` and SimPO's average
  log-probability are. Pairs whose two
  responses are the same text are left out (counted). Chance is 0.5.
- **Exact answers**: on the ``snippet`` rows of ``qa_test``, the greedy answer (lego-eval's
  stopped generation, at most ``max_new_tokens`` tokens, stopping at the model's stop ids
  and the template's end-of-turn token) equals the row's ``answer``, both stripped.
- **The answers table**: the greedy answers of every model to the first ``answers``
  held-out questions, taken alternately from each kind.

The log-probabilities come from lego-eval's
[`score_continuations()`][lego.eval.harness_scoring.score_continuations] (rows sorted by
length, ``batch_size`` per forward pass, the output head on the scored positions only),
the answers from its
[`generate_continuations()`][lego.eval.harness_scoring.generate_continuations].

**One vocabulary.** The pretrained model's tokenizer lacks the chat template's tokens, so
it is scored with the SFT model's tokenizer: its own tokenizer, with the tokens it lacks
added by legollm's ``add_special_tokens()`` in the SFT tokenizer's id order, must have
the SFT tokenizer's fingerprint (ordinary text then encodes to the same ids), and its
vocabulary grows with ``grow_vocabulary()`` (new rows at the mean of the old ones), which
is exactly the model the SFT stage started from. Every model is thus scored on the same
token ids.

**Resuming.** Each model's three parts (answer loss, preferences, answers) are written to
``eval.json`` as soon as measured, with the model's SHA-256 and the settings (the rows'
digest included): after Ctrl-C the same call measures only what is missing, and a model
whose weights changed is measured again.

Example:
    >>> spec = StageEvalSpec(answers=4)
    >>> spec.enabled, spec.answers, spec.max_new_tokens
    (True, 4, 48)
    >>> StageEvalSpec(batch_size=0)
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: batch_size must be at least 1, got 0...
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lego.align import generation_stop_ids
from lego.align.sft import SFTDataset
from lego.data.encode import TokenizedExample
from lego.data.preference import PreferenceDataset, PreferenceExample
from lego.eval.harness_scoring import generate_continuations, score_continuations
from lego.protocols import (
    ENDOFTEXT,
    IGNORE_INDEX,
    CausalLM,
    CompatibilityError,
    Config,
    ConfigError,
    LegoError,
    Tokenizer,
    check_int,
    temporary_name,
    write_errors,
)
from lego.protocols.chat import ChatTemplate, get_chat_template
from lego.tokenize.fingerprint import tokenizer_fingerprint
from lego.train.monitor import read_metrics
from lego.train.plot import matplotlib_modules

__all__ = [
    "STAGES_KEY",
    "STAGES_PNG",
    "StageEvalSpec",
    "evaluate_stages",
    "stage_report_lines",
    "draw_stage_curves",
]

STAGES_KEY = "stages"
"""The part of ``eval.json`` that holds the stage evaluation."""

STAGES_PNG = "stages.png"
"""The picture of every stage's curves, in the run directory."""

_FORMAT = "lego-pipeline-stages-eval"
_VERSION = 1
_PARTS = ("answer_loss", "preference", "answers")
_LABELS = {"pretrained": "pretrained", "sft": "SFT", "dpo": "DPO", "grpo": "GRPO"}
_CELL = 160  # characters of an answer shown in the table


@dataclass(frozen=True, kw_only=True)
class StageEvalSpec(Config):
    """What the stage evaluation measures (``eval.stages`` of the pipeline's YAML).

    Attributes:
        enabled: Evaluate the stages' models (``false``: no ``stages`` part, no section).
        answers: Held-out questions in the report's side-by-side answers table (0: none).
        max_new_tokens: Greedy tokens per answer (the table and the exact answers).
        batch_size: Rows per forward pass (scoring) and prompts per generation.
    """

    enabled: bool = True
    answers: int = 6
    max_new_tokens: int = 48
    batch_size: int = 64

    def validate(self) -> None:
        """A boolean switch; sizes in range."""
        super().validate()
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got {self.enabled!r}", key="enabled")
        check_int("answers", self.answers, minimum=0, maximum=100)
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)


# -- models and their one vocabulary -------------------------------------------------------


@dataclass
class _Scored:
    """A model ready to measure: the model, the scoring tokenizer, its stop ids."""

    model: CausalLM
    tokenizer: Tokenizer
    stop_ids: list[int]


def _open_model(model_dir: Path, device: str) -> tuple[CausalLM, Tokenizer]:
    """Load a model directory (float32, eval mode) and its own tokenizer."""
    from lego.recipes.loading import load_model, load_tokenizer

    model, found = load_model(model_dir, dtype="float32", device=device)
    return model, load_tokenizer(None, found)


def _has_template(tokenizer: Tokenizer, template: ChatTemplate) -> bool:
    return all(token in tokenizer.special_tokens for token in template.special_tokens)


def _common_tokenizer(
    tokenizers: Mapping[str, Tokenizer], template: ChatTemplate
) -> tuple[str, Tokenizer]:
    """The tokenizer every model is scored with: the first that has the template's tokens."""
    from lego.recipes.tuning import add_special_tokens

    for name, tokenizer in tokenizers.items():
        if _has_template(tokenizer, template):
            return name, tokenizer
    name, first = next(iter(tokenizers.items()))
    grown, _ = add_special_tokens(first, template.special_tokens)
    return name, grown


def _check_tokenizer(name: str, own: Tokenizer, common: Tokenizer, model_dir: Path) -> None:
    """``own`` plus the special tokens it lacks (in ``common``'s id order) must be ``common``."""
    from lego.recipes.tuning import add_special_tokens

    tokenizer = own
    missing = sorted(
        (token_id, token)
        for token, token_id in common.special_tokens.items()
        if token not in own.special_tokens
    )
    if missing:
        tokenizer, _ = add_special_tokens(own, [token for _, token in missing])
    if tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(common):
        raise CompatibilityError(
            f"the {name} model's tokenizer is not the one the other stages' models use "
            "(with the chat template's tokens added, its vocabulary differs)",
            path=str(model_dir),
            hint="evaluate models of one pipeline run (each later stage starts from the "
            "one before it)",
        )


def _fit(
    name: str,
    model: CausalLM,
    common: Tokenizer,
    *,
    model_dir: Path,
    template: ChatTemplate,
) -> _Scored:
    """Give ``model`` the common tokenizer (growing its vocabulary if needed) and stop ids."""
    from lego.recipes.tuning import grow_vocabulary

    vocab = int(model.config.vocab_size)
    if common.vocab_size > vocab:
        import lego.arch

        if not isinstance(model, lego.arch.DecoderLM):
            raise CompatibilityError(
                f"the {name} model has {vocab} ids, fewer than the {common.vocab_size} of "
                "the scoring tokenizer, and is no lego-arch model whose vocabulary can grow",
                path=str(model_dir),
            )
        where = next(model.parameters()).device
        model = grow_vocabulary(model, common.vocab_size).to(where).train(False)
    specials = common.special_tokens
    stops = list(generation_stop_ids(model_dir) or ())
    for token in (template.end_of_turn, ENDOFTEXT):
        if token in specials and specials[token] not in stops:
            stops.append(specials[token])
    return _Scored(model=model, tokenizer=common, stop_ids=stops)


# -- the rows ---------------------------------------------------------------------------------


def _split(example: TokenizedExample) -> tuple[list[int], list[int]]:
    """``(prompt, answer)`` ids of a rendered example: the answer is its trained tokens."""
    trained = [t for t, label in enumerate(example.labels) if label != IGNORE_INDEX]
    first, last = trained[0], trained[-1]
    sequence = [*example.input_ids[: last + 1], example.labels[last]]
    return sequence[: first + 1], sequence[first + 1 :]


@dataclass
class _Rows:
    """The held-out rows as token ids, with the rows each measurement uses."""

    qa: list[tuple[int, list[int], list[int]]]  # (row, prompt, answer + end of turn)
    pairs: list[tuple[int, list[int], list[int], list[int]]]  # (row, prompt, chosen, rejected)
    identical: int
    prompts: dict[int, list[int]]  # row -> generation prompt (snippets and the table)
    exact: list[int]  # the snippet rows
    table: list[int]  # the table's rows


def _table_rows(qa_test: Sequence[Mapping[str, str]], count: int) -> list[int]:
    """The first ``count`` rows, taken alternately from each kind (in order of appearance)."""
    by_kind: dict[str, list[int]] = {}
    for index, row in enumerate(qa_test):
        by_kind.setdefault(str(row.get("kind", "")), []).append(index)
    chosen: list[int] = []
    queues = [list(rows) for rows in by_kind.values()]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def _encode_rows(
    qa_test: Sequence[Mapping[str, str]],
    pairs_test: Sequence[Mapping[str, str]],
    tokenizer: Tokenizer,
    template: ChatTemplate,
    spec: StageEvalSpec,
) -> _Rows:
    qa: list[tuple[int, list[int], list[int]]] = []
    if qa_test:
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in qa_test]
        data = SFTDataset(
            rows,
            tokenizer,
            template=template,
            max_length=1 << 30,  # never cut here: the scoring cuts the prompt to the context
            split="all",
            empty_completion="skip",
        )
        for one, line in zip(data.examples, data.lines, strict=True):
            prompt, answer = _split(one)
            qa.append((line - 1, prompt, answer))
    pairs: list[tuple[int, list[int], list[int], list[int]]] = []
    kept = [i for i, r in enumerate(pairs_test) if r["chosen"] != r["rejected"]]
    if kept:
        sides = [
            {key: pairs_test[i][key] for key in ("prompt", "chosen", "rejected")} for i in kept
        ]
        preference = PreferenceDataset(sides, tokenizer, template=template, split="all")
        for example, line in zip(preference.examples, preference.lines, strict=True):
            assert isinstance(example, PreferenceExample)
            prompt, chosen = _split(example.chosen)
            _, rejected = _split(example.rejected)
            pairs.append((kept[line - 1], prompt, chosen, rejected))
    exact = [i for i, r in enumerate(qa_test) if r.get("kind") == "snippet" and "answer" in r]
    table = _table_rows(qa_test, spec.answers)
    prompts = {
        i: template.encode(
            tokenizer,
            [{"role": "user", "content": qa_test[i]["prompt"]}],
            add_generation_prompt=True,
        )
        for i in dict.fromkeys([*exact, *table])
    }
    return _Rows(
        qa=qa,
        pairs=pairs,
        identical=len(pairs_test) - len(kept),
        prompts=prompts,
        exact=exact,
        table=table,
    )


# -- the measurements -------------------------------------------------------------------------


def _score(
    model: CausalLM, requests: list[tuple[list[int], list[int]]], batch_size: int
) -> list[float]:
    if not requests:
        return []
    # One row per request: with two continuations per prompt, copying each prompt's KV cache
    # (share_contexts) measured 1.3-2.5x slower than reading the prompt twice on 2 CPU cores.
    scores = score_continuations(model, requests, batch_size=batch_size, share_contexts=False)
    return [score for score, _ in scores]


def _loss_entry(nll: float, tokens: int, text_nll: float, text_tokens: int) -> dict[str, Any]:
    return {
        "tokens": tokens,
        "nll": nll,
        "loss": nll / tokens if tokens else math.nan,
        "text_tokens": text_tokens,
        "text_loss": text_nll / text_tokens if text_tokens else math.nan,
    }


def _answer_loss(
    scored: _Scored,
    rows: _Rows,
    qa_test: Sequence[Mapping[str, str]],
    template: ChatTemplate,
    batch_size: int,
) -> dict[str, Any]:
    context = int(scored.model.config.context_length)
    end = scored.tokenizer.special_tokens.get(template.end_of_turn)
    use = [(row, p, a) for row, p, a in rows.qa if len(a) <= context]
    requests: list[tuple[list[int], list[int]]] = []
    for _, prompt, answer in use:
        requests.append((prompt, answer))
        text_ids = answer[:-1] if answer[-1] == end else answer
        requests.append((prompt, text_ids or answer))
    scores = _score(scored.model, requests, batch_size)
    totals: dict[str, list[float]] = {}
    for n, (row, _, answer) in enumerate(use):
        whole = -scores[2 * n]
        has_text = answer[-1] == end and len(answer) > 1
        text_nll = -scores[2 * n + 1] if has_text else whole
        text_tokens = len(answer) - 1 if has_text else len(answer)
        for key in ("all", str(qa_test[row].get("kind", ""))):
            entry = totals.setdefault(key, [0.0, 0.0, 0.0, 0.0, 0.0])
            entry[0] += whole
            entry[1] += len(answer)
            entry[2] += text_nll
            entry[3] += text_tokens
            entry[4] += 1
    result: dict[str, Any] = {
        "rows": len(use),
        "dropped": len(rows.qa) - len(use),
        **_loss_entry(*_unpack(totals.get("all"))),
        "by_kind": {},
    }
    for key, entry in totals.items():
        if key != "all":
            result["by_kind"][key] = {"rows": int(entry[4]), **_loss_entry(*_unpack(entry))}
    return result


def _unpack(entry: list[float] | None) -> tuple[float, int, float, int]:
    if entry is None:
        return 0.0, 0, 0.0, 0
    return entry[0], int(entry[1]), entry[2], int(entry[3])


def _preference(
    scored: _Scored,
    rows: _Rows,
    pairs_test: Sequence[Mapping[str, str]],
    batch_size: int,
) -> dict[str, Any]:
    context = int(scored.model.config.context_length)
    use = [p for p in rows.pairs if max(len(p[2]), len(p[3])) <= context]
    requests: list[tuple[list[int], list[int]]] = []
    for _, prompt, chosen, rejected in use:
        requests += [(prompt, chosen), (prompt, rejected)]
    scores = _score(scored.model, requests, batch_size)
    groups: dict[str, list[tuple[float, float]]] = {}
    for n, (row, _, chosen, rejected) in enumerate(use):
        margin = scores[2 * n] - scores[2 * n + 1]
        per_token = scores[2 * n] / len(chosen) - scores[2 * n + 1] / len(rejected)
        for key in ("all", str(pairs_test[row].get("corruption", ""))):
            groups.setdefault(key, []).append((margin, per_token))

    def summary(margins: list[tuple[float, float]]) -> dict[str, Any]:
        right = sum(1 for m, _ in margins if m > 0)
        right_per_token = sum(1 for _, m in margins if m > 0)
        return {
            "pairs": len(margins),
            "correct": right,
            "accuracy": right / len(margins) if margins else math.nan,
            "margin": sum(m for m, _ in margins) / len(margins) if margins else math.nan,
            "accuracy_per_token": right_per_token / len(margins) if margins else math.nan,
        }

    return {
        **summary(groups.get("all", [])),
        "identical": rows.identical,
        "dropped": len(rows.pairs) - len(use),
        "by_corruption": {k: summary(v) for k, v in groups.items() if k != "all"},
    }


def _answers(
    scored: _Scored,
    rows: _Rows,
    qa_test: Sequence[Mapping[str, str]],
    spec: StageEvalSpec,
) -> dict[str, Any]:
    context = int(scored.model.config.context_length)
    room = context - spec.max_new_tokens
    if room < 1:
        raise ConfigError(
            f"eval.stages.max_new_tokens {spec.max_new_tokens} leaves no room for a prompt "
            f"in the model's context of {context} tokens",
            key="eval.stages.max_new_tokens",
            hint=f"give at most {context - 1}",
        )
    order = list(rows.prompts)
    texts = generate_continuations(
        scored.model,
        scored.tokenizer,
        [rows.prompts[i][-room:] for i in order],
        max_new_tokens=spec.max_new_tokens,
        eos_token_ids=scored.stop_ids,
        batch_size=spec.batch_size,
    )
    by_row = dict(zip(order, texts, strict=True))
    right = sum(1 for i in rows.exact if by_row[i].strip() == str(qa_test[i]["answer"]).strip())
    return {
        "exact_rows": len(rows.exact),
        "exact_correct": right,
        "exact_accuracy": right / len(rows.exact) if rows.exact else math.nan,
        "table": {str(i): by_row[i] for i in rows.table},
    }


# -- the record in eval.json --------------------------------------------------------------


def _rows_digest(*tables: Sequence[Mapping[str, str]]) -> str:
    text = json.dumps([list(t) for t in tables], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _StageRecord:
    """The ``stages`` part of ``eval.json``: each model's parts, kept across a rerun."""

    def __init__(
        self, path: Path, settings: dict[str, Any], models: dict[str, dict[str, str]]
    ) -> None:
        from lego.recipes.pipeline_eval import read_eval_file

        self.path = path
        self.data: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "complete": False,
            "settings": settings,
            "models": models,
            "parts": {},
        }
        whole = read_eval_file(path)
        old = whole.get(STAGES_KEY) if whole is not None else None
        self.kept = 0
        if (
            isinstance(old, dict)
            and old.get("format") == _FORMAT
            and old.get("version") == _VERSION
            and old.get("settings") == settings
            and isinstance(old.get("parts"), dict)
        ):
            for name, info in models.items():
                part = old["parts"].get(name)
                if isinstance(part, dict) and part.get("sha256") == info["sha256"]:
                    self.data["parts"][name] = part
                    self.kept += sum(1 for key in _PARTS if key in part)

    def part(self, name: str) -> dict[str, Any]:
        """The parts of model ``name`` measured so far."""
        parts: dict[str, Any] = self.data["parts"]
        sha = self.data["models"][name]["sha256"]
        found: dict[str, Any] = parts.setdefault(name, {"sha256": sha})
        return found

    def put(self, name: str, key: str, value: dict[str, Any]) -> None:
        """Record one part of one model and write ``eval.json``."""
        self.part(name)[key] = value
        self.write()

    def write(self) -> None:
        """Write ``eval.json`` with this part, keeping the rest of the file as it is."""
        from lego.recipes.pipeline_eval import read_eval_file, write_eval_file

        whole = read_eval_file(self.path) or {}
        whole[STAGES_KEY] = self.data
        write_eval_file(self.path, whole)


def _last_val(run_dir: Path, keys: Sequence[str]) -> dict[str, Any] | None:
    """The last validation record of a run that holds ``keys`` (None without one)."""
    try:
        records = read_metrics(run_dir)
    except LegoError:
        return None
    found = [
        r
        for r in records
        if r.get("split") == "val" and all(isinstance(r.get(k), (int, float)) for k in keys)
    ]
    if not found:
        return None
    last = max(found, key=lambda r: int(r["step"]))
    return {"step": int(last["step"]), **{k: float(last[k]) for k in keys}}


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def evaluate_stages(
    *,
    run_dir: Path,
    models: dict[str, Path],
    qa_test: list[dict[str, str]],
    pairs_test: list[dict[str, str]],
    spec: StageEvalSpec,
    device: str = "cpu",
    template: str = "chatml",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every stage's model on the held-out rows; write ``eval.json``'s ``stages``.

    Args:
        run_dir: The run directory (``eval.json`` goes there; ``dpo/metrics.jsonl`` and
            ``grpo/metrics.jsonl`` are read when present).
        models: Model directories by stage, in order: ``"pretrained"``, then each stage
            that ran (``"sft"``, ``"dpo"``, ``"grpo"``).
        qa_test: Held-out questions: ``prompt``, ``completion``, ``answer``, ``kind``
            (``docstring`` / ``snippet``).
        pairs_test: Held-out preference pairs: ``prompt``, ``chosen``, ``rejected``,
            ``corruption``.
        spec: The settings.
        device: Where the models run (a torch device, or ``"auto"``).
        template: The chat template the stages trained with.
        echo: Where progress lines go.

    Returns:
        The ``stages`` part: ``settings``, ``models`` (path and SHA-256), ``parts`` (per
        model: ``answer_loss``, ``preference``, ``answers``), ``rows`` (the table's
        questions and references), ``dpo`` (DPO's last validation metrics, or None),
        ``grpo`` (the GRPO run's held-out accuracy before and after, or None).

    Raises:
        ConfigError: No model, an unknown template, or ``max_new_tokens`` that leaves no
            room for a prompt.
        CompatibilityError: A model whose tokenizer is not the other models'.
        KeyboardInterrupt: Ctrl-C; the parts measured so far stay in ``eval.json``.
    """
    from lego.recipes.pipeline_eval import EVAL_FILE, model_digest

    if not models:
        raise ConfigError("evaluate_stages: no model to evaluate", key="models")
    chat = get_chat_template(template)
    start = time.perf_counter()
    settings = {
        **{k: v for k, v in spec.to_dict().items() if k != "enabled"},
        "template": chat.name,
        "rows_sha256": _rows_digest(qa_test, pairs_test),
    }
    infos = {
        name: {"path": _relative(path, run_dir), "sha256": model_digest(path)}
        for name, path in models.items()
    }
    record = _StageRecord(run_dir / EVAL_FILE, settings, infos)
    if record.kept:
        echo(f"stages eval: {record.kept} part(s) kept from {EVAL_FILE}")
    todo = [n for n in models if any(key not in record.part(n) for key in _PARTS)]
    if todo:
        tokenizers = {name: _own_tokenizer(path) for name, path in models.items()}
        _, common = _common_tokenizer(tokenizers, chat)
        for name, own in tokenizers.items():  # before any model is measured
            _check_tokenizer(name, own, common, models[name])
        rows = _encode_rows(qa_test, pairs_test, common, chat, spec)
        for name in todo:  # one model in memory at a time
            model, own = _open_model(models[name], device)
            _check_tokenizer(name, own, common, models[name])
            scored = _fit(name, model, common, model_dir=models[name], template=chat)
            done = record.part(name)
            if "answer_loss" not in done:
                echo(f"stages eval: {name}: answer loss on {len(rows.qa)} held-out questions")
                record.put(
                    name,
                    "answer_loss",
                    _answer_loss(scored, rows, qa_test, chat, spec.batch_size),
                )
            if "preference" not in done:
                echo(f"stages eval: {name}: preference accuracy on {len(rows.pairs)} pairs")
                record.put(
                    name, "preference", _preference(scored, rows, pairs_test, spec.batch_size)
                )
            if "answers" not in done:
                echo(f"stages eval: {name}: greedy answers to {len(rows.prompts)} questions")
                record.put(name, "answers", _answers(scored, rows, qa_test, spec))
            del scored, model
    table = _table_rows(qa_test, spec.answers)
    record.data["rows"] = [
        {
            "row": i,
            "kind": qa_test[i].get("kind", ""),
            "prompt": qa_test[i]["prompt"],
            "reference": qa_test[i].get("answer", qa_test[i]["completion"]),
        }
        for i in table
    ]
    dpo_keys = ("val_rewards/accuracies", "val_rewards/margins")
    record.data["dpo"] = _last_val(run_dir / "dpo", dpo_keys) if "dpo" in models else None
    record.data["grpo"] = None
    if "grpo" in models:
        from lego.recipes.align import held_out_accuracy

        try:
            found = held_out_accuracy(run_dir / "grpo")
        except LegoError:
            found = None
        if found is not None:
            record.data["grpo"] = {"before": found[0], "after": found[1]}
    record.data["complete"] = True
    record.data["seconds"] = time.perf_counter() - start  # this invocation's
    record.write()
    echo(f"stages eval: written to {EVAL_FILE}")
    return record.data


def _own_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer stored with a model (its weights are not read)."""
    from lego.protocols.layout import find_model_dir
    from lego.recipes.loading import load_tokenizer

    return load_tokenizer(None, find_model_dir(model_dir))


# -- the report -------------------------------------------------------------------------------


def _label(name: str) -> str:
    return _LABELS.get(name, name)


def _num(value: Any, digits: int = 3) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    """One answer as a Markdown table cell: shortened, escaped, lines joined by ``<br>``."""
    value = str(text).strip()
    if not value:
        return "*(empty)*"
    if len(value) > _CELL:
        value = value[: _CELL - 1] + "…"
    for char in "\\`*_[]|#":
        value = value.replace(char, "\\" + char)
    value = html.escape(value, quote=False)
    return "<br>".join(line for line in value.splitlines() if line.strip())


def _get(parts: Mapping[str, Any], name: str, *keys: str) -> Any:
    value: Any = parts.get(name, {})
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def stage_report_lines(
    evaluation: Mapping[str, Any], *, times: Mapping[str, float] | None = None
) -> list[str]:
    """The report's ``## Stages`` section.

    Args:
        evaluation: What [`evaluate_stages()`][lego.recipes.pipeline_stages_eval.evaluate_stages]
            returned, or the whole ``eval.json`` (its ``stages`` part is used).
        times: Seconds each stage took, by stage name (optional: a table when given).

    Returns:
        Markdown lines: the stage times, the figures per model, what they say, and the
        side-by-side answers.

    Example:
        >>> stage_report_lines({"models": {}, "parts": {}})[0]
        '## Stages'
    """
    data: Mapping[str, Any] = evaluation.get(STAGES_KEY, evaluation)
    names = list(data.get("models", {}))
    parts: Mapping[str, Any] = data.get("parts", {})
    lines = ["## Stages", ""]
    if times:
        lines += ["| stage | time (s) |", "| --- | ---: |"]
        lines += [f"| {_label(n)} | {float(s):.0f} |" for n, s in times.items()]
        lines.append("")
    if not names:
        return [*lines, "No stage was evaluated.", ""]
    lines += [
        "Every model measured on the same held-out rows (modules never trained on) and the "
        "same token ids (`eval.json`, part `stages`). Answer loss: mean cross-entropy of the "
        "answer tokens and the end-of-turn token after the prompt as a chat user turn; "
        "answer text: the same without the end-of-turn token. Preference accuracy: share of "
        "pairs whose chosen response has the higher mean log-probability per response token "
        "(by sums of log-probabilities, the shorter response is favoured: a truncated answer "
        "nearly always wins them; per corruption: per token / by sums); margin: the mean of "
        "log p(chosen) - log p(rejected).",
        "",
        "| measure | " + " | ".join(_label(n) for n in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]

    def row(title: str, values: list[str]) -> None:
        lines.append(f"| {title} | " + " | ".join(values) + " |")

    row(
        "held-out answer loss (nats/token)",
        [_num(_get(parts, n, "answer_loss", "loss")) for n in names],
    )
    kinds = sorted({k for n in names for k in (_get(parts, n, "answer_loss", "by_kind") or {})})
    for kind in kinds:
        row(
            f"… {kind} questions",
            [_num(_get(parts, n, "answer_loss", "by_kind", kind, "loss")) for n in names],
        )
    row(
        "answer text only (nats/token)",
        [_num(_get(parts, n, "answer_loss", "text_loss")) for n in names],
    )
    row(
        "held-out preference accuracy, per token (chance 0.5)",
        [_num(_get(parts, n, "preference", "accuracy_per_token")) for n in names],
    )
    corruptions = sorted(
        {k for n in names for k in (_get(parts, n, "preference", "by_corruption") or {})}
    )
    for kind in corruptions:
        row(
            f"… {kind} pairs (per token / sums)",
            [
                _num(_get(parts, n, "preference", "by_corruption", kind, "accuracy_per_token"))
                + " / "
                + _num(_get(parts, n, "preference", "by_corruption", kind, "accuracy"))
                for n in names
            ],
        )
    row(
        "held-out preference accuracy, by sums of log-probs",
        [_num(_get(parts, n, "preference", "accuracy")) for n in names],
    )
    row("mean margin (nats)", [_num(_get(parts, n, "preference", "margin")) for n in names])
    exact = []
    for n in names:
        rows_ = _get(parts, n, "answers", "exact_rows")
        right = _get(parts, n, "answers", "exact_correct")
        exact.append(f"{right}/{rows_}" if isinstance(rows_, int) and rows_ else "n/a")
    row("exact answers (snippet questions, greedy)", exact)
    grpo = data.get("grpo")
    if isinstance(grpo, Mapping) and "grpo" in names:
        row(
            "GRPO task: held-out accuracy before → after",
            [
                f"{_num(grpo.get('before'))} → {_num(grpo.get('after'))}" if n == "grpo" else ""
                for n in names
            ],
        )
    lines.append("")
    lines += _reading(names, parts, data)
    lines += _answers_table(names, parts, data)
    return lines


def _reading(names: list[str], parts: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """Sentences that read the figures as they are."""
    said: list[str] = []

    def change(before: Any, after: Any) -> str:
        return "lowered" if after < before else "did not lower"

    def finite(*values: Any) -> bool:
        return all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )

    if "pretrained" in names and "sft" in names:
        a = _get(parts, "pretrained", "answer_loss", "loss")
        b = _get(parts, "sft", "answer_loss", "loss")
        ta = _get(parts, "pretrained", "answer_loss", "text_loss")
        tb = _get(parts, "sft", "answer_loss", "text_loss")
        if finite(a, b):
            said.append(
                f"SFT {change(a, b)} the held-out answer loss from {_num(a)} to {_num(b)} "
                f"nats/token (answer text alone, without the end-of-turn token the pretrained "
                f"model never saw: from {_num(ta)} to {_num(tb)})."
            )
    if "sft" in names and "dpo" in names:
        a = _get(parts, "sft", "preference", "accuracy_per_token")
        b = _get(parts, "dpo", "preference", "accuracy_per_token")
        sa = _get(parts, "sft", "preference", "accuracy")
        sb = _get(parts, "dpo", "preference", "accuracy")
        ma = _get(parts, "sft", "preference", "margin")
        mb = _get(parts, "dpo", "preference", "margin")
        pairs = _get(parts, "dpo", "preference", "pairs")
        if finite(a, b):
            verb = "raised" if b > a else "did not raise"
            above = "above" if b > 0.5 else "not above"
            said.append(
                f"DPO {verb} held-out preference accuracy (per token) from {_num(a)} to "
                f"{_num(b)} on {pairs} pairs ({above} chance, 0.5); by sums of log-probs "
                f"from {_num(sa)} to {_num(sb)}; the mean margin went from {_num(ma)} to "
                f"{_num(mb)} nats."
            )
    dpo = data.get("dpo")
    if isinstance(dpo, Mapping):
        said.append(
            f"DPO's own last validation (step {dpo.get('step')}, implicit reward against the "
            f"SFT model): accuracy {_num(dpo.get('val_rewards/accuracies'))}, margin "
            f"{_num(dpo.get('val_rewards/margins'))}."
        )
    grpo = data.get("grpo")
    if isinstance(grpo, Mapping):
        said.append(
            f"GRPO's held-out exact-answer accuracy on its own task went from "
            f"{_num(grpo.get('before'))} to {_num(grpo.get('after'))}."
        )
    exact = [f"{_label(n)} {_get(parts, n, 'answers', 'exact_correct')}" for n in names]
    total = _get(parts, names[-1], "answers", "exact_rows")
    if isinstance(total, int) and total:
        said.append(
            f"Exact answers to the {total} held-out snippet questions: " + ", ".join(exact) + "."
        )
    return [" ".join(said), ""] if said else []


def _answers_table(
    names: list[str], parts: Mapping[str, Any], data: Mapping[str, Any]
) -> list[str]:
    rows = data.get("rows") or []
    if not rows:
        return []
    lines = [
        "Greedy answers to held-out questions (lego-generate, stopped at the end-of-turn token):",
        "",
        "| question | reference | " + " | ".join(_label(n) for n in names) + " |",
        "| --- | --- |" + " --- |" * len(names),
    ]
    for entry in rows:
        key = str(entry.get("row"))
        answers = [_cell(_get(parts, n, "answers", "table", key) or "") for n in names]
        lines.append(
            f"| {_cell(entry.get('prompt', ''))} | {_cell(entry.get('reference', ''))} | "
            + " | ".join(answers)
            + " |"
        )
    return [*lines, ""]


# -- the curves -------------------------------------------------------------------------------


def _stage_curves(name: str) -> tuple[Any, ...]:
    from lego.recipes.align import DPO_CURVES, GRPO_CURVES
    from lego.recipes.report import Curve

    if name == "dpo":
        return DPO_CURVES
    if name == "grpo":
        return (GRPO_CURVES[0], GRPO_CURVES[-1])
    return (Curve("loss", "loss", "val_loss"),)


def draw_stage_curves(*, run_dir: Path, stages: dict[str, Path]) -> Path | None:
    """Draw ``stages.png``: one row of panels per stage, from each stage's ``metrics.jsonl``.

    Pretraining and SFT: the loss (training line, validation points); DPO: the loss, the
    reward margin and the preference accuracy (``rewards/margins``,
    ``rewards/accuracies`` and their ``val_`` forms); GRPO: the reward and the share of
    exact answers (held-out: ``val_accuracy``).

    Args:
        run_dir: Where ``stages.png`` goes.
        stages: Each stage's run directory (holding ``metrics.jsonl``), in order.

    Returns:
        The image, or None when no stage has a metrics log.

    Raises:
        ConfigError: matplotlib is missing or the image cannot be written.
    """
    from lego.recipes.report import _series

    logged = {}
    for name, folder in stages.items():
        try:
            logged[name] = read_metrics(folder)
        except LegoError:
            continue
    if not logged:
        return None
    agg, figure_module = matplotlib_modules(
        "the pipeline report's pictures", install='"legollm[plot]"'
    )
    columns = max(len(_stage_curves(name)) for name in logged)
    figure = figure_module.Figure(figsize=(4.2 * columns, 2.6 * len(logged)))
    agg.FigureCanvasAgg(figure)
    axes = figure.subplots(len(logged), columns, squeeze=False)
    for line, (name, records) in enumerate(logged.items()):
        curves = _stage_curves(name)
        for column in range(columns):
            ax = axes[line][column]
            if column >= len(curves):
                ax.set_visible(False)
                continue
            curve = curves[column]
            steps, values = _series(records, "train", curve.train)
            if steps:
                ax.plot(steps, values, label="train")
            val_steps: list[int] = []
            if curve.val is not None:
                val_steps, val_values = _series(records, "val", curve.val)
                if val_steps:
                    ax.plot(val_steps, val_values, "o-", label="validation")
            title = f"{_label(name)}: {curve.title}"
            ax.set_title(title if steps or val_steps else f"{title} (not logged)", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    figure.suptitle("the stages: pretraining, then each later stage")
    figure.tight_layout()
    target = run_dir / STAGES_PNG
    staging = temporary_name(target)
    try:
        with write_errors(target, what="image file", hint="free some space, then run again"):
            figure.savefig(staging, format="png")
            os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target
