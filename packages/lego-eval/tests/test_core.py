"""lego.eval.core: CORE-style multiple-choice, schema and exact-match scoring on JSONL."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from lego.eval import CoreTask, evaluate_core, evaluate_task, load_examples, render_prompts
from lego.protocols import ConfigError, DataError, ModelConfig

STRENGTH = 4.0


class Repeat(nn.Module):
    """Predicts that the next byte repeats the current one: ``p(repeat) = e^a / (e^a + 255)``."""

    config = ModelConfig(vocab_size=256, context_length=64)

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.modes: list[bool] = []

    def forward(self, ids: Tensor, *, attention_mask: Any = None, **_: Any) -> Tensor:
        assert attention_mask is None
        self.shapes.append(tuple(ids.shape))
        self.modes.append(self.training)
        return nn.functional.one_hot(ids, 256).float() * STRENGTH  # (B, T, 256)


REPEAT_NLL = -math.log(math.exp(STRENGTH) / (math.exp(STRENGTH) + 255))
OTHER_NLL = -math.log(1 / (math.exp(STRENGTH) + 255))


class Bytes:
    vocab_size = 256
    special_tokens: ClassVar[dict[str, int]] = {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def _write(folder: Path, name: str, rows: list[Any]) -> str:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _task(path: str, task_type: str, **options: Any) -> CoreTask:
    options.setdefault("continuation_delimiter", "")
    return CoreTask(name=Path(path).stem, path=path, task_type=task_type, **options)  # type: ignore[arg-type]


# -- scoring rules, by hand ----------------------------------------------------------------


def test_multiple_choice_uses_the_mean_loss_not_the_sum(tmp_path: Path) -> None:
    # "x" + "xxxxy": 4 repeats and a miss, mean (4r + m) / 5; "x" + "y": one miss, mean m.
    # The sum prefers "y" (4r + m > m), the mean prefers "xxxxy".
    assert (4 * REPEAT_NLL + OTHER_NLL) / 5 < OTHER_NLL < 4 * REPEAT_NLL + OTHER_NLL
    path = _write(
        tmp_path,
        "mc.jsonl",
        [
            {"query": "x", "choices": ["xxxxy", "y"], "gold": 0},
            {"query": "x", "choices": ["xxxxy", "y"], "gold": 1},
        ],
    )
    score = evaluate_task(Repeat(), Bytes(), _task(path, "multiple_choice"))
    assert score.correct == (True, False)
    assert score.accuracy == 0.5
    assert score.random_baseline == 0.5
    assert score.centered == 0.0


def test_schema_scores_the_common_suffix(tmp_path: Path) -> None:
    # contexts "ab" / "bb", continuation "bbb": only the shared suffix is scored; "bb" + "bbb"
    # repeats throughout, "ab" + "bbb" misses once (b after a)
    path = _write(
        tmp_path,
        "schema.jsonl",
        [
            {"context_options": ["ab", "bb"], "continuation": "bbb", "gold": 1},
            {"context_options": ["ab", "bb", "cb"], "continuation": "bbb", "gold": 0},
        ],
    )
    score = evaluate_task(Repeat(), Bytes(), _task(path, "schema"))
    assert score.correct == (True, False)
    assert score.random_baseline == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_language_modeling_is_greedy_exact_match(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "lm.jsonl",
        [
            {"context": "aaa", "continuation": "aa"},  # greedy repeats: correct
            {"context": "aaa", "continuation": "ab"},  # the greedy token after a is a
            {"context": "ccc ", "continuation": "c"},  # context stripped: "ccc" + "c"
        ],
    )
    score = evaluate_task(Repeat(), Bytes(), _task(path, "language_modeling"))
    assert score.correct == (True, False, True)
    assert score.random_baseline == 0.0
    assert score.centered == pytest.approx(2 / 3)


def test_core_is_the_mean_centred_accuracy(tmp_path: Path) -> None:
    mc = _write(tmp_path, "mc.jsonl", [{"query": "x", "choices": ["xx", "y"], "gold": 0}] * 4)
    lm = _write(
        tmp_path,
        "lm.jsonl",
        [{"context": "aa", "continuation": "a"}, {"context": "aa", "continuation": "b"}],
    )
    tasks = [
        _task(mc, "multiple_choice", random_baseline=0.25),
        _task(lm, "language_modeling"),
    ]
    result = evaluate_core(Repeat(), Bytes(), tasks)
    assert [t.accuracy for t in result.tasks] == [1.0, 0.5]
    assert [t.centered for t in result.tasks] == [1.0, 0.5]
    assert result.core == 0.75
    table = result.to_markdown()
    assert "| mc | multiple_choice | 4 | 1.0000 | 0.2500 | 1.0000 |" in table
    assert table.rstrip().endswith("| **CORE** | | | | | 0.7500 |")
    assert result.to_dict()["core"] == 0.75
    assert result.to_dict()["tasks"][1]["num_correct"] == 1


# -- prompts, few-shot, bos, cropping ------------------------------------------------------


def test_render_prompts_with_fewshot() -> None:
    shots = [{"query": "1+1=", "choices": ["2", "3"], "gold": 0}]
    assert render_prompts(
        {"query": "2+2=", "choices": ["4", "5"], "gold": 0}, "multiple_choice", " ", shots
    ) == [
        "1+1= 2\n\n2+2= 4",
        "1+1= 2\n\n2+2= 5",
    ]
    schema_shot = [{"context_options": ["A", "B"], "continuation": "c", "gold": 1}]
    item = {"context_options": ["X", "Y"], "continuation": "z", "gold": 0}
    assert render_prompts(item, "schema", "-", schema_shot) == ["B-c\n\nX-z", "B-c\n\nY-z"]
    lm_shot = [{"context": " Rome is in ", "continuation": "Italy"}]
    item = {"context": "Paris is in ", "continuation": "France"}
    assert render_prompts(item, "language_modeling", " ", lm_shot) == [
        "Rome is in Italy\n\nParis is in",
        "Rome is in Italy\n\nParis is in France",
    ]


def test_fewshot_is_seeded_by_the_example_and_excludes_it(tmp_path: Path) -> None:
    rows = [{"context": f"{c}{c}", "continuation": c} for c in "abcdefgh"]
    path = _write(tmp_path, "lm.jsonl", rows)
    seen: list[list[str]] = []

    class Recording(Bytes):
        def encode(self, text: str) -> list[int]:
            seen.append(text.split("\n\n"))
            return super().encode(text)

    task = _task(path, "language_modeling", num_fewshot=3)
    first = evaluate_task(Repeat(), Recording(), task, batch_size=1)
    prompts = [parts for parts in seen if len(parts) == 4][1::2]  # the "with" prompts
    assert len(prompts) == 8
    for row, parts in zip(rows, prompts, strict=True):
        own = row["context"] + row["continuation"]
        assert parts[-1] == own
        assert own not in parts[:-1]  # never its own demonstration
        assert len(set(parts[:-1])) == 3
    again = evaluate_task(Repeat(), Bytes(), task, batch_size=5)
    assert again.correct == first.correct == (True,) * 8


def test_bos_gives_the_first_token_context(tmp_path: Path) -> None:
    # an empty query: the choices differ from their first token, which needs a BOS before it
    path = _write(tmp_path, "mc.jsonl", [{"query": "", "choices": ["aa", "ba"], "gold": 0}])
    task = _task(path, "multiple_choice")
    with pytest.raises(DataError, match="no context") as err:
        evaluate_task(Repeat(), Bytes(), task)
    assert err.value.line == 1
    assert "bos_id" in (err.value.hint or "")
    assert evaluate_task(Repeat(), Bytes(), task, bos_id=0).correct == (True,)


def test_long_prompts_keep_their_last_tokens(tmp_path: Path) -> None:
    model = Repeat()
    path = _write(tmp_path, "mc.jsonl", [{"query": "q" * 100, "choices": ["qq", "qz"], "gold": 0}])
    score = evaluate_task(model, Bytes(), _task(path, "multiple_choice"), max_length=10)
    assert score.correct == (True,)
    assert max(shape[1] for shape in model.shapes) == 10
    long = _write(tmp_path, "long.jsonl", [{"context": "a", "continuation": "a" * 20}])
    with pytest.raises(DataError, match="after keeping the last 10 tokens"):
        evaluate_task(model, Bytes(), _task(long, "language_modeling"), max_length=10)


# -- batching -------------------------------------------------------------------------------


class Contextual(nn.Module):
    """Logits from the running mean of the embeddings: every earlier token matters."""

    config = ModelConfig(vocab_size=256, context_length=128)

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(256, 8, generator=gen), requires_grad=False)
        self.head = nn.Parameter(torch.randn(8, 256, generator=gen), requires_grad=False)

    def forward(self, ids: Tensor, **_: Any) -> Tensor:
        x = self.embed[ids]  # (B, T, 8)
        count = torch.arange(1, ids.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return 4.0 * (x.cumsum(1) / count) @ self.head  # (B, T, 256)


def test_results_do_not_depend_on_batch_size(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)

    def word(n: int) -> str:
        return "".join(chr(97 + int(i)) for i in torch.randint(0, 6, (n,), generator=gen))

    mc = [
        {"query": word(5 + i % 7), "choices": [word(1 + j) for j in range(4)], "gold": i % 4}
        for i in range(23)
    ]
    schema = [
        {"context_options": [word(2 + i % 3), word(4)], "continuation": word(3), "gold": i % 2}
        for i in range(17)
    ]
    lm = [{"context": word(4 + i % 5), "continuation": word(1)} for i in range(19)]
    tasks = [
        _task(_write(tmp_path, "mc.jsonl", mc), "multiple_choice", num_fewshot=2),
        _task(_write(tmp_path, "schema.jsonl", schema), "schema", num_fewshot=1),
        _task(_write(tmp_path, "lm.jsonl", lm), "language_modeling"),
    ]
    results = {
        b: evaluate_core(Contextual(), Bytes(), tasks, bos_id=0, batch_size=b) for b in (1, 3, 8)
    }
    for b in (3, 8):
        assert [t.correct for t in results[b].tasks] == [t.correct for t in results[1].tasks]
        assert results[b].core == results[1].core
    # the scores are not trivially constant (the test could fail)
    assert 0 < results[1].tasks[0].num_correct < 23
    assert 0 < results[1].tasks[1].num_correct < 17


# -- malformed files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"choices": ["a", "b"], "gold": 0}', "no field 'query'"),
        ('{"query": "q", "choices": ["a"], "gold": 0}', "at least two strings"),
        ('{"query": "q", "choices": ["a", 3], "gold": 0}', "at least two strings"),
        ('{"query": "q", "choices": ["a", "b"], "gold": 2}', "an index into choices"),
        ('{"query": "q", "choices": ["a", "b"], "gold": true}', "an index into choices"),
        ('{"query": 5, "choices": ["a", "b"], "gold": 0}', "must be a string"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    good = json.dumps({"query": "q", "choices": ["a", "b"], "gold": 1})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        evaluate_task(Repeat(), Bytes(), _task(str(path), "multiple_choice"))
    assert err.value.line == 4
    assert err.value.path == str(path)
    assert "bad.jsonl" in str(err.value)


@pytest.mark.parametrize(
    ("task_type", "row", "match"),
    [
        ("schema", {"context_options": ["a", "b"], "continuation": "", "gold": 0}, "non-empty"),
        ("schema", {"context_options": ["a", "b"], "gold": 0}, "no field 'continuation'"),
        ("language_modeling", {"context": "a"}, "no field 'continuation'"),
        ("language_modeling", {"context": None, "continuation": "b"}, "must be a string"),
    ],
)
def test_malformed_rows_of_other_types(
    tmp_path: Path, task_type: str, row: dict[str, Any], match: str
) -> None:
    path = _write(tmp_path, "bad.jsonl", [row])
    with pytest.raises(DataError, match=match) as err:
        load_examples(path, task_type)  # type: ignore[arg-type]
    assert err.value.line == 1


def test_empty_file_and_too_few_for_fewshot(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        load_examples(empty, "multiple_choice")
    one = _write(tmp_path, "one.jsonl", [{"context": "a", "continuation": "a"}])
    with pytest.raises(DataError, match="num_fewshot 1 needs at least 2"):
        evaluate_task(Repeat(), Bytes(), _task(one, "language_modeling", num_fewshot=1))


def test_task_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="random_baseline"):
        CoreTask(name="t", path="x.jsonl", task_type="schema", random_baseline=1.0)
    with pytest.raises(ConfigError, match="num_fewshot"):
        CoreTask(name="t", path="x.jsonl", task_type="schema", num_fewshot=-1)
    with pytest.raises(ConfigError):
        CoreTask(name="t", path="x.jsonl", task_type="essay")  # type: ignore[arg-type]
    task = CoreTask.from_dict({"name": "t", "path": "x.jsonl", "task_type": "schema"})
    assert task.continuation_delimiter == " "
    with pytest.raises(ConfigError, match="two tasks are named"):
        evaluate_core(Repeat(), Bytes(), [task, task])
    with pytest.raises(ConfigError, match="no CORE task"):
        evaluate_core(Repeat(), Bytes(), [])
    mc = _write(tmp_path, "mc.jsonl", [{"query": "x", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(ConfigError, match="max_length"):
        evaluate_task(Repeat(), Bytes(), _task(mc, "multiple_choice"), max_length=65)


def test_eval_mode_restored(tmp_path: Path) -> None:
    model = Repeat()
    model.train(True)
    mc = _write(tmp_path, "mc.jsonl", [{"query": "x", "choices": ["xx", "y"], "gold": 0}])
    evaluate_task(model, Bytes(), _task(mc, "multiple_choice"))
    assert model.modes == [False]  # scored in eval mode
    assert model.training  # then restored
