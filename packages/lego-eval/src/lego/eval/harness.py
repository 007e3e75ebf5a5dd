"""lm-evaluation-harness on any lego model: [`LegoLM`][lego.eval.harness.LegoLM] (``lego``).

Needs the ``harness`` extra (``pip install "lego-eval[harness]"``); ``import lego.eval``
never imports this module, and importing it without lm_eval raises a
[`ConfigError`][lego.protocols.ConfigError] that says what to install.

[`LegoLM`][lego.eval.harness.LegoLM] answers the harness's three request types on any
[`CausalLM`][lego.protocols.CausalLM] and [`Tokenizer`][lego.protocols.Tokenizer]:

- ``loglikelihood``: ``(context, continuation)`` -> ``(sum of the continuation's log-probs,
  is_greedy)``. The text is split into ids as lm-eval's own ``HFLM`` splits it (trailing
  spaces of the context move to the continuation; the continuation's ids are those of
  ``context + continuation`` after the context's; an empty context becomes the prefix token),
  then [`score_continuations()`][lego.eval.harness_scoring.score_continuations] scores them
  in length-sorted, right-padded batches whose results do not depend on the batch size
  (each distinct context read once, its KV cache copied to its continuations).
- ``loglikelihood_rolling``: the log-likelihood of a whole text, cut into the harness's
  rolling windows (lm-eval's ``get_rolling_token_windows`` with a context of one token:
  every token is predicted exactly once, each window reads up to ``max_length`` tokens);
  all windows of all requests are scored together, batched by length.
- ``generate_until``: greedy (or sampled) generation on lego-generate, stopped by the
  end-of-sequence ids, the request's ``until`` strings and ``max_gen_toks``
  ([`generate_continuations()`][lego.eval.harness_scoring.generate_continuations]).

[`run_harness()`][lego.eval.harness.run_harness] is what ``legollm eval harness`` calls: it
builds the model, finds the tasks (the brick's offline tasks,
[`lego.eval.tasks`][lego.eval.tasks], are always on the include path) and runs lm-eval's
``simple_evaluate``; [`results_table()`][lego.eval.harness.results_table] prints the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lego.eval.harness_scoring import (
    generate_continuations,
    model_device,
    score_continuations,
)
from lego.eval.tasks import tasks_dir
from lego.protocols import (
    ENDOFTEXT,
    CausalLM,
    CompatibilityError,
    ConfigError,
    Tokenizer,
    check_int,
    did_you_mean,
    import_optional,
)
from lego.protocols.chat import encode_text

__all__ = [
    "LegoLM",
    "ModelLoader",
    "set_default_loader",
    "run_harness",
    "results_table",
    "PREFIX_TOKENS",
    "EOS_TOKENS",
]

_NEEDED_BY = "lego.eval.harness (lm-evaluation-harness)"
_INSTALL = '"lego-eval[harness]"'
_lm_model: Any = import_optional("lm_eval.api.model", needed_by=_NEEDED_BY, install=_INSTALL)
_lm_registry: Any = import_optional("lm_eval.api.registry", needed_by=_NEEDED_BY, install=_INSTALL)
_lm_utils: Any = import_optional("lm_eval.utils", needed_by=_NEEDED_BY, install=_INSTALL)
_lm_model_utils: Any = import_optional(
    "lm_eval.models.utils", needed_by=_NEEDED_BY, install=_INSTALL
)

ModelLoader = Callable[[str], tuple[CausalLM, Tokenizer]]
"""Loads a model directory (or run) into a model and its tokenizer: the application's job
(legollm passes its loader; the brick never imports lego-arch)."""

PREFIX_TOKENS = ("<|begin_of_text|>", "<s>", ENDOFTEXT, "<|end_of_text|>", "</s>")
"""Special tokens tried, in order, for the prefix id (BOS first, then end-of-text), as HFLM
prefers the tokenizer's BOS and falls back to its EOS."""

EOS_TOKENS = (ENDOFTEXT, "<|end_of_text|>", "</s>")
"""Special tokens that end a generation when the tokenizer has them."""

_default_loader: list[ModelLoader] = []


def set_default_loader(loader: ModelLoader | None) -> None:
    """Set the loader ``LegoLM(pretrained=...)`` uses when none is passed.

    lm-eval builds models from strings (``--model lego --model_args pretrained=DIR``), which
    cannot carry a callable: an application that wraps lm-eval's own command line registers
    its loader here first.

    Args:
        loader: ``path -> (model, tokenizer)``; None forgets the one set.

    Example:
        >>> set_default_loader(None)  # LegoLM(pretrained=...) now needs loader=...
    """
    _default_loader.clear()
    if loader is not None:
        _default_loader.append(loader)


_GEN_KEYS = frozenset(
    {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "seed"}
)


def _batch_size(value: object) -> int:
    """lm-eval passes ``--batch_size`` as an int or a string; ``auto`` is not supported."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"batch_size must be a whole number >= 1, got {value!r}",
            key="batch_size",
            hint="e.g. --batch_size 8 (automatic batch sizes are not supported)",
        )
    return value


class LegoLM(_lm_model.TemplateLM):  # type: ignore[misc]
    """lm-evaluation-harness model for any lego causal LM and tokenizer.

    Built either from a model and its tokenizer, or from ``pretrained`` (a model directory
    or run) and a ``loader`` that the application passes (lm-eval's ``--model lego
    --model_args pretrained=DIR`` needs one: see [`run_harness()`][lego.eval.harness.run_harness]).

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM].
        tokenizer: Its tokenizer.
        pretrained: A model directory or run, loaded with ``loader`` (instead of ``model``
            and ``tokenizer``).
        loader: Turns ``pretrained`` into ``(model, tokenizer)``; None means the one given
            to [`set_default_loader()`][lego.eval.harness.set_default_loader].
        batch_size: Rows per forward pass (an int, or its digits as lm-eval passes them).
        max_batch_size: Accepted for lm-eval's interface; unused (no automatic sizes).
        max_length: The longest input the model reads; None means its context length.
        max_gen_toks: Default token budget of ``generate_until`` (a task's
            ``max_gen_toks`` overrides it).
        prefix_token_id: The id put before an empty context and before each rolling
            text; None means the first of [`PREFIX_TOKENS`][lego.eval.harness.PREFIX_TOKENS]
            the tokenizer has.
        eos_token_ids: Ids that end a generation; None means those of
            [`EOS_TOKENS`][lego.eval.harness.EOS_TOKENS] the tokenizer has.
        device: Move the model there first (e.g. ``"cuda"``); None leaves it where it is.

    Raises:
        ConfigError: Neither a model nor ``pretrained`` + ``loader``, or a bad setting.

    Example:
        >>> import lm_eval.api.registry
        >>> lm_eval.api.registry.get_model("lego") is LegoLM
        True
    """

    backend = "causal"

    def __init__(
        self,
        model: CausalLM | None = None,
        tokenizer: Tokenizer | None = None,
        *,
        pretrained: str | os.PathLike[str] | None = None,
        loader: ModelLoader | None = None,
        batch_size: int | str = 8,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        if model is None and pretrained is not None:
            if loader is None and _default_loader:
                loader = _default_loader[0]
            if loader is None:
                raise ConfigError(
                    f"the lego model needs a loader to read {os.fspath(pretrained)!r}",
                    key="loader",
                    hint="run it through `legollm eval harness` or "
                    "lego.eval.harness.run_harness(..., loader=...), which pass one, or call "
                    "lego.eval.harness.set_default_loader(...) first",
                )
            model, tokenizer = loader(os.fspath(pretrained))
        if model is None or tokenizer is None:
            raise ConfigError(
                "the lego model needs a model and its tokenizer (or pretrained= and a loader)",
                key="model" if model is None else "tokenizer",
            )
        if device is not None and isinstance(model, torch.nn.Module):
            model.to(device)
        self.lego_model: CausalLM = model
        self.lego_tokenizer: Tokenizer = tokenizer
        self._batch = _batch_size(batch_size)
        self._max_length = max_length
        if max_length is not None:
            check_int("max_length", max_length, minimum=2, owner="LegoLM")
        self._max_gen_toks = check_int("max_gen_toks", max_gen_toks, minimum=1, owner="LegoLM")
        specials = tokenizer.special_tokens
        self._prefix = prefix_token_id
        if self._prefix is None:
            self._prefix = next((specials[t] for t in PREFIX_TOKENS if t in specials), None)
        if eos_token_ids is None:
            eos_token_ids = [specials[t] for t in EOS_TOKENS if t in specials]
        self._eos = [int(i) for i in eos_token_ids]

    # ------------------------------------------------------------------ properties
    @property
    def prefix_token_id(self) -> int:
        """The id before an empty context and before a rolling text (BOS or end-of-text).

        Raises:
            CompatibilityError: The tokenizer has none of
                [`PREFIX_TOKENS`][lego.eval.harness.PREFIX_TOKENS] and none was given.
        """
        if self._prefix is None:
            known = ", ".join(sorted(self.lego_tokenizer.special_tokens)) or "none"
            raise CompatibilityError(
                "this task needs a BOS or end-of-text token (before an empty context or a "
                f"rolling text), and the tokenizer has none of {list(PREFIX_TOKENS)} "
                f"(its special tokens: {known})",
                key="prefix_token_id",
                hint="pass prefix_token_id=<id> (--model_args prefix_token_id=...)",
            )
        return self._prefix

    @property
    def eot_token_id(self) -> int:
        """The first end-of-sequence id, else the prefix id."""
        return self._eos[0] if self._eos else self.prefix_token_id

    @property
    def max_length(self) -> int:
        """The longest input the model reads."""
        if self._max_length is not None:
            return self._max_length
        return int(self.lego_model.config.context_length)

    @property
    def max_gen_toks(self) -> int:
        """Default token budget of ``generate_until``."""
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        """Rows per forward pass."""
        return self._batch

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return model_device(self.lego_model)

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's class name (lm-eval fingerprints request caches with it)."""
        return type(self.lego_tokenizer).__name__

    # ------------------------------------------------------------------ tokens
    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Encode text as plain text (special-token strings in it stay text).

        Args:
            string: The text.
            add_special_tokens: Ignored: a lego tokenizer adds no BOS by itself.
            **kwargs: Ignored (lm-eval's interface).

        Returns:
            The ids.
        """
        return encode_text(self.lego_tokenizer, string)

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        """Decode ids to text.

        Args:
            tokens: Token ids.
            **kwargs: Ignored (lm-eval's interface).

        Returns:
            The text.
        """
        return self.lego_tokenizer.decode(list(tokens))

    # ------------------------------------------------------------------ requests
    def _loglikelihood_tokens(
        self,
        requests: Sequence[tuple[Any, Sequence[int], Sequence[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Score ``(cache_key, context_ids, continuation_ids)`` requests (batched by length).

        Args:
            requests: The requests; a key other than None is written to lm-eval's cache.
            disable_tqdm: Ignored (no progress bar).
            override_bs: A batch size for this call.

        Returns:
            ``(log_probability, is_greedy)`` per request.
        """
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_continuations(
            self.lego_model,
            pairs,
            batch_size=override_bs or self._batch,
            max_length=self.max_length,
        )
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        """Log-likelihood of whole texts, every token predicted exactly once.

        Each text is encoded, preceded by the prefix id and cut into lm-eval's rolling
        windows of ``max_length`` predictions (each window after the first reads as much
        earlier text as fits); the windows of all texts are scored together.

        Args:
            requests: lm-eval ``Instance`` objects whose ``args`` are ``(text,)``.
            disable_tqdm: Ignored.

        Returns:
            The summed log-probability (nats) per text.
        """
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        texts = [request.args[0] for request in requests]
        for index, text in enumerate(texts):
            rolling = _lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for window in rolling:
                context, continuation = _lm_utils.make_disjoint_window(window)
                windows.append((list(context), list(continuation)))
                owners.append(index)
        scores = score_continuations(
            self.lego_model, windows, batch_size=self._batch, max_length=self.max_length
        )
        totals = [0.0] * len(texts)
        for owner, (logprob, _) in zip(owners, scores, strict=True):
            totals[owner] += logprob
        for text, total in zip(texts, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate until a stop string, an end-of-sequence id or ``max_gen_toks``.

        Requests are grouped by their generation settings; each group is generated in
        length-sorted batches. A context longer than ``max_length - max_gen_toks`` tokens
        is cut from the left.

        Args:
            requests: lm-eval ``Instance`` objects whose ``args`` are ``(context,
                gen_kwargs)``; ``gen_kwargs`` may hold ``until``, ``max_gen_toks`` (or its
                aliases), ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``seed``.
            disable_tqdm: Ignored.

        Returns:
            The generated text per request (without the stop string).

        Raises:
            ConfigError: An unknown generation setting, or ``max_gen_toks`` that leaves no
                room for the context.
        """
        groups: dict[str, list[int]] = {}
        args = [request.args for request in requests]
        for index, (_, gen_kwargs) in enumerate(args):
            key = json.dumps(gen_kwargs, sort_keys=True, default=repr)
            groups.setdefault(key, []).append(index)
        texts = [""] * len(args)
        for indices in groups.values():
            settings = _lm_model_utils.normalize_gen_kwargs(
                dict(args[indices[0]][1]), self.max_gen_toks
            )
            unknown = sorted(set(settings) - _GEN_KEYS)
            if unknown:
                raise ConfigError(
                    f"generation setting {unknown[0]!r} is not supported by the lego model"
                    + did_you_mean(unknown[0], sorted(_GEN_KEYS)),
                    key=unknown[0],
                    hint=f"the task's generation_kwargs may use {sorted(_GEN_KEYS)}",
                )
            until = settings.get("until") or []
            stop = [until] if isinstance(until, str) else list(until)
            budget = int(settings["max_gen_toks"])
            room = self.max_length - budget
            if room < 1:
                raise ConfigError(
                    f"max_gen_toks {budget} leaves no room for a context in the model's "
                    f"{self.max_length} tokens",
                    key="max_gen_toks",
                    hint="lower max_gen_toks (the task's generation_kwargs or --gen_kwargs)",
                )
            prompts = []
            for index in indices:
                ids = self.tok_encode(args[index][0]) or [self.prefix_token_id]
                prompts.append(ids[-room:])
            sample = bool(settings.get("do_sample", False))
            top_k = settings.get("top_k")
            seed = settings.get("seed")
            outputs = generate_continuations(
                self.lego_model,
                self.lego_tokenizer,
                prompts,
                max_new_tokens=budget,
                stop=stop,
                eos_token_ids=self._eos,
                batch_size=self._batch,
                do_sample=sample,
                temperature=float(settings.get("temperature", 1.0)) if sample else None,
                top_p=settings.get("top_p"),
                top_k=None if top_k is None else int(top_k),
                seed=None if seed is None else int(seed),
            )
            for index, text in zip(indices, outputs, strict=True):
                texts[index] = text
                self.cache_hook.add_partial("generate_until", args[index], text)
        return texts


_lm_registry.register_model("lego")(LegoLM)


def _include_paths(
    include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
) -> list[str]:
    given: list[str | os.PathLike[str]]
    if include_path is None:
        given = []
    elif isinstance(include_path, (str, os.PathLike)):
        given = [include_path]
    else:
        given = list(include_path)
    paths = [str(tasks_dir())]
    for path in given:
        if not Path(path).is_dir():
            raise ConfigError(
                f"the task include path {os.fspath(path)!r} is not a folder",
                path=path,
                key="include_path",
                hint="give a folder that holds lm-eval task YAML files",
            )
        paths.append(os.fspath(path))
    return paths


def run_harness(
    model: CausalLM | LegoLM | str | os.PathLike[str],
    tokenizer: Tokenizer | None = None,
    *,
    tasks: Sequence[str],
    include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    loader: ModelLoader | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    log_samples: bool = False,
    seed: int = 0,
    bootstrap_iters: int = 100_000,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness tasks on a lego model; what ``legollm eval harness`` calls.

    The brick's offline tasks ([`lego.eval.tasks`][lego.eval.tasks]) are always on the
    include path; more folders of task YAML files can be added. Nothing is downloaded for
    the offline tasks; the real benchmarks (``hellaswag``, ``arc_easy``, ``mmlu``, ...)
    fetch their datasets from the Hugging Face Hub where a network exists.

    Args:
        model: A [`CausalLM`][lego.protocols.CausalLM] (with ``tokenizer``), a ready
            [`LegoLM`][lego.eval.harness.LegoLM], or a model directory / run read by
            ``loader``.
        tokenizer: The model's tokenizer (with a ``CausalLM``).
        tasks: Task, group or tag names, e.g. ``["lego_arithmetic_mc"]``.
        include_path: Folder(s) of extra task YAML files.
        loader: Reads a model directory (with a path ``model``).
        batch_size: Rows per forward pass.
        num_fewshot: Few-shot examples per prompt (None: each task's default).
        limit: Documents per task (a number) or a fraction of them (below 1).
        max_length: The longest input the model reads (None: its context length).
        max_gen_toks: Default generation budget.
        log_samples: Keep every document's requests and responses under ``"samples"``.
        seed: Seeds Python, NumPy, torch and the few-shot draw.
        bootstrap_iters: Resamples for the standard errors (0: none, much faster).
        metadata: Passed to the tasks (lm-eval's ``--metadata``).

    Returns:
        lm-eval's results dictionary: ``"results"`` (per task, e.g.
        ``results["results"]["lego_arithmetic_mc"]["acc,none"]``), ``"configs"``,
        ``"versions"``, ``"n-samples"`` and, with ``log_samples``, ``"samples"``.

    Raises:
        ConfigError: An unknown task (with the closest names), a missing include folder,
            a path ``model`` without a loader, or a bad setting.
    """
    evaluator: Any = import_optional("lm_eval.evaluator", needed_by=_NEEDED_BY, install=_INSTALL)
    manager_module: Any = import_optional("lm_eval.tasks", needed_by=_NEEDED_BY, install=_INSTALL)
    names = [str(task) for task in tasks]
    if not names:
        raise ConfigError("no task given", key="tasks", hint="e.g. tasks=['lego_arithmetic_mc']")
    if isinstance(model, LegoLM):
        lm = model
    elif isinstance(model, (str, os.PathLike)):
        lm = LegoLM(
            pretrained=model,
            loader=loader,
            batch_size=batch_size,
            max_length=max_length,
            max_gen_toks=max_gen_toks,
        )
    else:
        lm = LegoLM(
            model,
            tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            max_gen_toks=max_gen_toks,
        )
    manager = manager_module.TaskManager(
        include_path=_include_paths(include_path),
        metadata=dict(metadata) if metadata is not None else None,
    )
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            raise ConfigError(
                f"unknown task {name!r}" + did_you_mean(name, sorted(known)),
                key="tasks",
                hint="list the offline tasks with lego.eval.tasks.OFFLINE_TASKS; give the "
                "folder of your own task YAML files as include_path",
            )
    results = evaluator.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=log_samples,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=check_int("bootstrap_iters", bootstrap_iters, minimum=0),
    )
    if results is None:  # only on ranks other than 0 of a distributed run
        return {}
    return dict(results)


def results_table(results: Mapping[str, Any]) -> str:
    """The results of [`run_harness()`][lego.eval.harness.run_harness] as lm-eval's Markdown table.

    Args:
        results: The dictionary ``run_harness`` returned.

    Returns:
        One row per task and metric (and a second table for groups, when any).
    """
    table = str(_lm_utils.make_table(dict(results)))
    if results.get("groups"):
        table += "\n" + str(_lm_utils.make_table(dict(results), "groups"))
    return table
