r"""LLM-as-judge: a judge model grades a model's answers, alone or against another's.

Two modes, each with a prompt template in a plain text file
([`load_template()`][lego.eval.judge.load_template]; defaults ship in
``lego/eval/judge_templates/``):

- ``single``: the judge rates each answer from 1 to 10. Its reply must end with a verdict
  ``Rating: [[N]]`` (the last ``[[N]]`` of the reply counts); a reply without one, or with
  a number outside 1..10, is an *invalid* verdict: counted, never an error. The result is
  the mean rating over the valid verdicts.
- ``pairwise``: model A (the one evaluated) against model B (a baseline model's answers or
  reference answers). Every question is judged **twice, with the answers' positions
  swapped**: first A shown as "assistant A", then B shown as "assistant A". Each reply must
  hold ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie). Mapped back to the models, two verdicts
  that agree give the outcome (win, loss or tie for A) and the pair is *position
  consistent*; two that disagree (the judge preferred a position, not an answer) count as
  a **tie**, and the pair as inconsistent. A pair with an invalid verdict is invalid and
  left out of the rates. Reported: win / loss / tie rates over the valid pairs, the
  position-consistency rate (consistent / valid pairs), and the invalid counts.

Templates are ``str.format`` text with named fields: ``{question}`` and ``{answer}``
(single) or ``{answer_a}`` and ``{answer_b}`` (pairwise), all required, and ``{reference}``
(optional; when a template uses it every question needs a reference). Literal braces are
written ``{{`` and ``}}``.

Each judged item is appended to a JSON Lines file as it completes (one ``write`` of a whole
line, flushed to disk), so an interrupted or failed run keeps what it did, and a rerun with
the same file skips the items already there. The file remembers the mode, the judge model,
the template's hash and the two sides' names: a rerun with other settings (or other
precomputed answers) is refused rather than mixed.

Example:
    >>> parse_rating("The answer is right but terse. Rating: [[8]]")
    8.0
    >>> parse_rating("I would give it an eleven: [[11]]") is None
    True
    >>> parse_preference("B explains the steps; A does not. [[B]]")
    'B'
    >>> pairwise_outcome("A", "B")  # A's answer first, then shown second: A wins twice
    ('a', True)
    >>> pairwise_outcome("A", "A")  # the first position both times: a tie, inconsistent
    ('tie', False)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

from lego.eval.judge_client import JudgeClient, JudgeError
from lego.protocols import ConfigError, DataError
from lego.protocols.files import open_binary, read_text

__all__ = [
    "MODES",
    "ChatJudge",
    "JudgeClient",
    "JudgeError",
    "JudgeMode",
    "JudgeResult",
    "JudgeTemplate",
    "Preference",
    "Question",
    "default_template",
    "judge_answers",
    "load_answers",
    "load_questions",
    "load_template",
    "pairwise_outcome",
    "parse_preference",
    "parse_rating",
]

JudgeMode = Literal["single", "pairwise"]
"""``single`` (a 1-10 rating per answer) or ``pairwise`` (A against B, positions swapped)."""

MODES: tuple[JudgeMode, ...] = ("single", "pairwise")

Preference = Literal["A", "B", "tie"]
"""A pairwise verdict by *position*: the answer shown first (A), second (B), or a tie."""

_REQUIRED: dict[str, frozenset[str]] = {
    "single": frozenset({"question", "answer"}),
    "pairwise": frozenset({"question", "answer_a", "answer_b"}),
}
_OPTIONAL = frozenset({"reference"})

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_PREFERENCE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


class ChatJudge(Protocol):
    """What the grading needs of a judge: a URL for messages and one prompt -> one reply."""

    @property
    def url(self) -> str:
        """Where the judge is reached (for messages)."""
        ...

    @property
    def model(self) -> str:
        """The judge model's name (recorded with every item)."""
        ...

    def complete(self, prompt: str) -> str:
        """The judge's reply to ``prompt``; raises a ``LegoError`` when it cannot answer."""
        ...


# -- templates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt template, checked.

    Attributes:
        text: The ``str.format`` text.
        mode: The mode it is for.
        fields: The named fields it uses.
        source: Its file, or ``"default:<name>"`` for a shipped one.
    """

    text: str
    mode: JudgeMode
    fields: frozenset[str]
    source: str

    @property
    def uses_reference(self) -> bool:
        """Whether the template shows a reference answer (``{reference}``)."""
        return "reference" in self.fields

    @property
    def digest(self) -> str:
        """The first 16 hex digits of the text's SHA-256 (recorded with results)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def render(self, **values: str) -> str:
        """The prompt: the template with ``values`` put in its fields.

        Example:
            >>> template = default_template("single")
            >>> prompt = template.render(question="2+2?", answer="4")
            >>> "2+2?" in prompt and prompt.rstrip().endswith("[End of the answer]")
            True
        """
        return self.text.format_map({name: values.get(name, "") for name in self.fields})


def _check_mode(mode: str) -> JudgeMode:
    if mode not in MODES:
        raise ConfigError(
            f"unknown judge mode {mode!r}", key="mode", hint=f"use one of {', '.join(MODES)}"
        )
    return "single" if mode == "single" else "pairwise"


def parse_template(text: str, mode: JudgeMode, *, source: str) -> JudgeTemplate:
    """Check a template's fields for ``mode``.

    Args:
        text: The template text.
        mode: ``"single"`` or ``"pairwise"``.
        source: Where it came from (for messages).

    Returns:
        The checked template.

    Raises:
        ConfigError: When the text is not a valid format string, uses a field ``mode`` does
            not know (or a positional ``{}``), or lacks a required field; the message names
            ``source``.

    Example:
        >>> parse_template("Q: {question} A: {answr}", "single", source="t.txt")
        Traceback (most recent call last):
        ...
        lego.protocols.errors.ConfigError: the judge template uses unknown field {answr}...
    """
    mode = _check_mode(mode)
    allowed = _REQUIRED[mode] | _OPTIONAL
    listing = ", ".join("{" + f + "}" for f in sorted(allowed))
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as err:
        raise ConfigError(
            f"the judge template is not a valid template ({err})",
            path=source,
            hint="write literal braces as {{ and }}; fields are " + listing,
        ) from None
    unknown = sorted({n for n in names if n not in allowed})
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise ConfigError(
            f"the judge template uses unknown field{'s' if len(unknown) > 1 else ''} {shown} "
            f"for {mode} grading",
            path=source,
            hint=f"{mode} templates may use {listing}; write literal braces as {{{{ and }}}}",
        )
    missing = sorted(_REQUIRED[mode] - set(names))
    if missing:
        raise ConfigError(
            f"the judge template lacks the field{'s' if len(missing) > 1 else ''} "
            + ", ".join("{" + n + "}" for n in missing)
            + f" that {mode} grading needs",
            path=source,
            hint=f"{mode} templates must use "
            + ", ".join("{" + f + "}" for f in sorted(_REQUIRED[mode])),
        )
    return JudgeTemplate(text=text, mode=mode, fields=frozenset(names), source=source)


def default_template(mode: JudgeMode, *, reference: bool = False) -> JudgeTemplate:
    """A shipped template: ``single.txt``, ``pairwise.txt`` or their ``_reference`` forms.

    Args:
        mode: ``"single"`` or ``"pairwise"``.
        reference: The form that shows a reference answer.

    Returns:
        The template.

    Example:
        >>> sorted(default_template("pairwise", reference=True).fields)
        ['answer_a', 'answer_b', 'question', 'reference']
    """
    mode = _check_mode(mode)
    name = f"{mode}{'_reference' if reference else ''}.txt"
    folder = resources.files("lego.eval").joinpath("judge_templates")
    text = folder.joinpath(name).read_text("utf-8")
    return parse_template(text, mode, source=f"default:{name}")


def load_template(
    path: str | os.PathLike[str] | None, mode: JudgeMode, *, reference: bool = False
) -> JudgeTemplate:
    """A user's template file, checked, or the shipped default when ``path`` is None.

    Args:
        path: A UTF-8 text file, or None.
        mode: ``"single"`` or ``"pairwise"``.
        reference: With ``path`` None, the default that shows a reference answer.

    Returns:
        The template.

    Raises:
        ConfigError: When the file cannot be read, or its fields do not fit ``mode`` (see
            [`parse_template()`][lego.eval.judge.parse_template]).
        FormatError: When the file is not UTF-8.
    """
    if path is None:
        return default_template(mode, reference=reference)
    text = read_text(path, what="judge template")
    return parse_template(text, mode, source=os.fspath(path))


# -- questions and answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One question to answer and judge.

    Attributes:
        question: The question (the prompt the model answers).
        reference: A reference answer, or None.
        line: Its line in the questions file (0 when it came from no file).
    """

    question: str
    reference: str | None = None
    line: int = 0


def _rows(path: str | os.PathLike[str], what: str) -> list[tuple[int, dict[str, Any]]]:
    from lego.data.jsonl import iter_json_objects  # the one JSON Lines reader

    with open_binary(path, what=what) as lines:
        rows = list(iter_json_objects(lines, path))
    if not rows:
        raise DataError(
            f"the {what} holds no rows", path=path, hint="write one JSON object per line"
        )
    return rows


def _text_field(
    row: dict[str, Any], name: str, path: Any, line: int, *, required: bool
) -> str | None:
    if name not in row:
        if not required:
            return None
        raise DataError(
            f"line {line}: the row has no field {name!r}",
            path=path,
            line=line,
            key=name,
            hint='each line is a JSON object such as {"question": "...", "answer": "..."}',
        )
    value = row[name]
    if not isinstance(value, str) or (name == "question" and not value.strip()):
        raise DataError(
            f"line {line}: field {name!r} must be a "
            f"{'non-empty ' if name == 'question' else ''}string, got {value!r:.60}",
            path=path,
            line=line,
            key=name,
        )
    return value


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    r"""Read a questions file: JSON Lines of ``{"question": ..., "reference": ...}``.

    ``reference`` is optional; other fields (an ``answer``...) are ignored.

    Args:
        path: The file.

    Returns:
        The questions in file order.

    Raises:
        DataError: When a line is not a JSON object, lacks ``question``, or a field is not a
            string (naming the file and the line), or the file holds no rows.
        ConfigError: When the file cannot be opened.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "q.jsonl"
        >>> _ = path.write_text('{"question": "2+2?", "reference": "4"}\n{"q": "3+3?"}\n')
        >>> load_questions(path)
        Traceback (most recent call last):
        ...
        lego.protocols.errors.DataError: line 2: the row has no field 'question'...
    """
    questions = []
    for line, row in _rows(path, "questions file"):
        text = _text_field(row, "question", path, line, required=True)
        reference = _text_field(row, "reference", path, line, required=False)
        questions.append(Question(question=text or "", reference=reference, line=line))
    return questions


def load_answers(
    path: str | os.PathLike[str], questions: Sequence[Question] | None = None
) -> list[str]:
    """Read an answers file: JSON Lines of ``{"question": ..., "answer": ...}``.

    Args:
        path: The file.
        questions: When given, the file must hold one row per question, in the same order
            and with the same question text.

    Returns:
        The answers in file order.

    Raises:
        DataError: When a row is malformed, or does not match ``questions`` (naming the file
            and the line).
        ConfigError: When the file cannot be opened.
    """
    rows = _rows(path, "answers file")
    answers: list[str] = []
    for index, (line, row) in enumerate(rows):
        question = _text_field(row, "question", path, line, required=True)
        answer = _text_field(row, "answer", path, line, required=True)
        if (
            questions is not None
            and index < len(questions)
            and question != questions[index].question
        ):
            raise DataError(
                f"line {line}: the question differs from question {index + 1} of the "
                f"questions file ({question!r:.40} vs {questions[index].question!r:.40})",
                path=path,
                line=line,
                key="question",
                hint="write the answers in the questions file's order, one per question",
            )
        answers.append(answer or "")
    if questions is not None and len(answers) != len(questions):
        raise DataError(
            f"the file holds {len(answers)} answers for {len(questions)} questions",
            path=path,
            hint="write one answer per question, in the questions file's order",
        )
    return answers


# -- verdicts -------------------------------------------------------------------------------


def parse_rating(reply: str) -> float | None:
    """The rating of a single-answer verdict: the last ``[[N]]`` of the reply, 1 <= N <= 10.

    Args:
        reply: The judge's reply.

    Returns:
        The rating, or None when the reply holds no valid one.
    """
    found = _RATING.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


def parse_preference(reply: str) -> Preference | None:
    """The verdict of a pairwise reply: the last ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie).

    Args:
        reply: The judge's reply.

    Returns:
        ``"A"`` or ``"B"`` (the position preferred), ``"tie"``, or None when there is none.
    """
    found = _PREFERENCE.findall(reply)
    if not found:
        return None
    verdict = found[-1].upper()
    return "A" if verdict == "A" else "B" if verdict == "B" else "tie"


def pairwise_outcome(
    first: Preference | None, swapped: Preference | None
) -> tuple[str | None, bool | None]:
    """Combine the two verdicts of a pair into the outcome for model A.

    Args:
        first: The verdict with model A's answer shown first (position A).
        swapped: The verdict with model B's answer shown first.

    Returns:
        ``(outcome, consistent)``: ``"a"`` (A wins), ``"b"`` (B wins) or ``"tie"``, and
        whether both verdicts agree; ``(None, None)`` when a verdict is invalid. Verdicts
        that disagree give a tie.
    """
    if first is None or swapped is None:
        return None, None
    by_model = {"A": "a", "B": "b", "tie": "tie"}
    one = by_model[first]
    two = {"A": "b", "B": "a", "tie": "tie"}[swapped]
    if one == two:
        return one, True
    return "tie", False


# -- results --------------------------------------------------------------------------------


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _shown(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class JudgeResult:
    """The judged items and their summary.

    Attributes:
        mode: ``"single"`` or ``"pairwise"``.
        judge_model: The judge model's name.
        items: One record per question, in question order (the JSON Lines file's records).
        name_a: The label of the model evaluated.
        name_b: The label of the other side (pairwise).
    """

    mode: JudgeMode
    judge_model: str
    items: tuple[dict[str, Any], ...]
    name_a: str = "model"
    name_b: str = "baseline"

    @property
    def num_items(self) -> int:
        """Questions judged."""
        return len(self.items)

    @property
    def ratings(self) -> list[float]:
        """The valid ratings (single mode)."""
        return [i["rating"] for i in self.items if i.get("rating") is not None]

    @property
    def mean_rating(self) -> float | None:
        """The mean valid rating, or None when there is none (single mode)."""
        ratings = self.ratings
        return sum(ratings) / len(ratings) if ratings else None

    @property
    def invalid_verdicts(self) -> int:
        """Replies with no parseable verdict (two replies per pair in pairwise mode)."""
        if self.mode == "single":
            return sum(1 for i in self.items if i.get("rating") is None)
        return sum(1 for i in self.items for v in i["verdicts"] if v is None)

    def _count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.get("outcome") == outcome)

    @property
    def valid_pairs(self) -> int:
        """Pairs whose two verdicts both parsed (pairwise mode)."""
        return sum(1 for i in self.items if i.get("outcome") is not None)

    @property
    def wins(self) -> int:
        """Pairs won by model A."""
        return self._count("a")

    @property
    def losses(self) -> int:
        """Pairs won by model B."""
        return self._count("b")

    @property
    def ties(self) -> int:
        """Pairs tied: both verdicts a tie, or verdicts that disagree."""
        return self._count("tie")

    @property
    def consistent(self) -> int:
        """Valid pairs whose verdicts agree once the positions are swapped back."""
        return sum(1 for i in self.items if i.get("consistent") is True)

    def to_dict(self) -> dict[str, Any]:
        """The summary (and every item) as JSON-compatible data."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "judge_model": self.judge_model,
            "num_items": self.num_items,
            "invalid_verdicts": self.invalid_verdicts,
        }
        if self.mode == "single":
            ratings = self.ratings
            data.update(
                valid=len(ratings),
                mean_rating=self.mean_rating,
                min_rating=min(ratings) if ratings else None,
                max_rating=max(ratings) if ratings else None,
            )
        else:
            valid = self.valid_pairs
            data.update(
                model_a=self.name_a,
                model_b=self.name_b,
                valid_pairs=valid,
                invalid_pairs=self.num_items - valid,
                wins=self.wins,
                losses=self.losses,
                ties=self.ties,
                win_rate=_rate(self.wins, valid),
                loss_rate=_rate(self.losses, valid),
                tie_rate=_rate(self.ties, valid),
                position_consistency=_rate(self.consistent, valid),
            )
        data["items"] = list(self.items)
        return data

    def to_markdown(self) -> str:
        """A Markdown table of the summary (``| measure | value |``)."""
        data = self.to_dict()
        if self.mode == "single":
            rows = [
                ("answers judged", str(self.num_items)),
                ("valid verdicts", str(data["valid"])),
                ("invalid verdicts", str(self.invalid_verdicts)),
                ("mean rating (1-10)", _shown(data["mean_rating"], 2)),
                ("min / max rating", f"{_shown(data['min_rating'], 1)} / "
                 f"{_shown(data['max_rating'], 1)}"),
            ]  # fmt: skip
        else:
            valid = self.valid_pairs
            rows = [
                ("pairs judged (x2, positions swapped)", str(self.num_items)),
                ("valid pairs", str(valid)),
                (f"{self.name_a} wins", f"{self.wins} ({_shown(data['win_rate'])})"),
                (f"{self.name_b} wins", f"{self.losses} ({_shown(data['loss_rate'])})"),
                ("ties", f"{self.ties} ({_shown(data['tie_rate'])})"),
                (
                    "position-consistent pairs",
                    f"{self.consistent} ({_shown(data['position_consistency'])})",
                ),
                ("invalid pairs", str(self.num_items - valid)),
                ("invalid verdicts", str(self.invalid_verdicts)),
            ]
        table = "| measure | value |\n| --- | ---: |\n"
        return table + "".join(f"| {a} | {b} |\n" for a, b in rows)


# -- the run --------------------------------------------------------------------------------

AnswerSource = Sequence[str] | Callable[[str], str]
"""Precomputed answers (one per question, in order) or a function question -> answer."""


def _answer(source: AnswerSource, index: int, question: str) -> str:
    if callable(source):
        return source(question)
    return source[index]


class _Log:
    """The JSON Lines file of judged items: read for a resume, appended line by line."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.done: dict[int, dict[str, Any]] = {}
        if path.exists():
            self._read()

    def _read(self) -> None:
        raw = self.path.read_bytes()
        cut = raw.rfind(b"\n") + 1
        if cut < len(raw):  # a line torn by a crash: drop it, the item is judged again
            with open(self.path, "r+b") as stream:
                stream.truncate(cut)
        for number, text in enumerate(raw[:cut].decode("utf-8", "replace").splitlines(), 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"line {number} is not a judged item",
                    path=self.path,
                    line=number,
                    hint="this file is written by the judge run: remove it to start over",
                ) from None
            for key, value in self.header.items():
                if record.get(key) != value:
                    raise ConfigError(
                        f"the partial results were made with another {key} "
                        f"({record.get(key)!r}, now {value!r})",
                        path=self.path,
                        line=number,
                        hint="use the same settings to resume, or another output (legollm: "
                        "--overwrite starts over)",
                    )
            self.done[index] = record

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[int(record["index"])] = record


def judge_answers(
    questions: Sequence[Question],
    answers: AnswerSource,
    judge: ChatJudge,
    *,
    mode: JudgeMode = "single",
    baseline: AnswerSource | None = None,
    template: JudgeTemplate | None = None,
    results_path: str | os.PathLike[str] | None = None,
    names: tuple[str, str] = ("model", "baseline"),
    on_item: Callable[[int, int], None] | None = None,
) -> JudgeResult:
    """Have ``judge`` grade the answers to ``questions``.

    Args:
        questions: The questions, with their references when the template shows them.
        answers: The answers of the model evaluated (model A): a sequence, one per
            question, or a function question -> answer called only for items not yet
            judged.
        judge: The judge (a [`JudgeClient`][lego.eval.judge_client.JudgeClient]).
        mode: ``"single"`` (rate each answer 1-10) or ``"pairwise"`` (A against
            ``baseline``, each pair judged twice with the positions swapped).
        baseline: Model B's answers (pairwise only), as ``answers``.
        template: The prompt template; default: the shipped one for ``mode``, its
            reference form when every question has a reference.
        results_path: The JSON Lines file each judged item is appended to; when it
            already holds items of the same mode, judge model and template, those are
            kept and not judged again.
        names: Labels of model A and model B in the results.
        on_item: Called as ``on_item(done, total)`` after each item.

    Returns:
        The [`JudgeResult`][lego.eval.judge.JudgeResult].

    Raises:
        ConfigError: When the template does not fit the mode, uses ``{reference}`` and a
            question has none, ``baseline`` is missing (pairwise) or given (single), or
            ``results_path`` holds items made with other settings (mode, judge model,
            template, names, questions, or precomputed answers that differ).
        DataError: When the number of precomputed answers differs from the questions'.
        JudgeError: When the judge stays down after its retries; the message says how
            many items are kept in ``results_path``.
    """
    mode = _check_mode(mode)
    if not questions:
        raise ConfigError("no question to judge", key="questions")
    if mode == "pairwise" and baseline is None:
        raise ConfigError(
            "pairwise judging needs model B's answers", key="baseline",
            hint="pass a baseline model's answers or reference answers",
        )  # fmt: skip
    if mode == "single" and baseline is not None:
        raise ConfigError(
            "single-answer judging takes no baseline", key="baseline",
            hint="use mode='pairwise' to compare two models",
        )  # fmt: skip
    for source, what in ((answers, "answers"), (baseline, "baseline answers")):
        if source is not None and not callable(source) and len(source) != len(questions):
            raise DataError(
                f"{len(source)} {what} for {len(questions)} questions",
                key=what,
                hint="give one answer per question, in order",
            )
    if template is None:
        template = default_template(mode, reference=all(q.reference is not None for q in questions))
    elif template.mode != mode:
        raise ConfigError(
            f"the template is for {template.mode} judging, not {mode}",
            path=template.source,
            key="template",
        )
    if template.uses_reference:
        lacking = next((q for q in questions if q.reference is None), None)
        if lacking is not None:
            raise ConfigError(
                "the judge template shows {reference} but a question has no reference"
                + (f" (questions file line {lacking.line})" if lacking.line else ""),
                path=template.source,
                hint='give every question a "reference", or use a template without it',
            )
    header: dict[str, Any] = {
        "mode": mode,
        "judge_model": judge.model,
        "template": template.digest,
        "model_a": names[0],
    }
    if mode == "pairwise":
        header["model_b"] = names[1]
    log = _Log(Path(results_path), header) if results_path is not None else None
    done = dict(log.done) if log is not None else {}
    for index, item in done.items():
        if index >= len(questions) or item.get("question") != questions[index].question:
            raise ConfigError(
                f"the partial results hold item {index + 1}, which is not question "
                f"{index + 1} of this run",
                path=results_path,
                hint="resume with the same questions, or use another output (legollm: "
                "--overwrite starts over)",
            )
        given = [("answer_a" if mode == "pairwise" else "answer", answers)]
        given += [("answer_b", baseline)] if baseline is not None else []
        for key, source in given:
            if not callable(source) and item.get(key) != source[index]:
                raise ConfigError(
                    f"the partial results hold another answer to question {index + 1} "
                    f"({item.get(key)!r:.40} vs {source[index]!r:.40})",
                    path=results_path,
                    key=key,
                    hint="resume with the same answers, or use another output (legollm: "
                    "--overwrite starts over)",
                )
    items: list[dict[str, Any]] = []
    for index, question in enumerate(questions):
        record = done.get(index)
        if record is None:
            try:
                record = _judge_one(index, question, answers, baseline, judge, template, header)
            except JudgeError as err:
                kept = len(log.done) if log is not None else 0
                kept_text = (
                    f"{kept} of {len(questions)} items judged are kept in {results_path}"
                    if log is not None
                    else "no results file was given, nothing is kept"
                )
                raise JudgeError(
                    f"{err.message}; {kept_text}",
                    path=err.path,
                    key=err.key,
                    hint=(err.hint or "")
                    + ("; the same run resumes after them" if log is not None else ""),
                ) from None
            if log is not None:
                log.append(record)
        items.append(record)
        if on_item is not None:
            on_item(index + 1, len(questions))
    return JudgeResult(
        mode=mode, judge_model=judge.model, items=tuple(items), name_a=names[0], name_b=names[1]
    )


def _judge_one(
    index: int,
    question: Question,
    answers: AnswerSource,
    baseline: AnswerSource | None,
    judge: ChatJudge,
    template: JudgeTemplate,
    header: dict[str, Any],
) -> dict[str, Any]:
    """Judge one question: one call (single) or two, positions swapped (pairwise)."""
    reference = question.reference or ""
    answer = _answer(answers, index, question.question)
    record: dict[str, Any] = {"index": index, **header, "question": question.question}
    if question.reference is not None:
        record["reference"] = question.reference
    if baseline is None:
        reply = judge.complete(
            template.render(question=question.question, answer=answer, reference=reference)
        )
        record.update(answer=answer, reply=reply, rating=parse_rating(reply))
        return record
    other = _answer(baseline, index, question.question)
    replies = [
        judge.complete(
            template.render(question=question.question, answer_a=a, answer_b=b, reference=reference)
        )
        for a, b in ((answer, other), (other, answer))
    ]
    verdicts = [parse_preference(reply) for reply in replies]
    outcome, consistent = pairwise_outcome(verdicts[0], verdicts[1])
    record.update(
        answer_a=answer,
        answer_b=other,
        replies=replies,
        verdicts=verdicts,
        outcome=outcome,
        consistent=consistent,
    )
    return record
