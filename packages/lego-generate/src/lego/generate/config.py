"""[`GenerationConfig`][lego.generate.GenerationConfig]: every decoding setting, validated.

The names are transformers' ``generate`` arguments where the concept is the same, so a
transformers user has nothing new to learn. The config turns into the processors of
[`lego.generate.warpers`][lego.generate.warpers] and
[`lego.generate.penalties`][lego.generate.penalties] with
[`GenerationConfig.processors()`][lego.generate.config.GenerationConfig.processors].

Greedy or sampling: with ``do_sample=None`` (the default) the engine samples as soon as a
sampling argument is given (``temperature``, ``top_k``, ``top_p``, ``min_p``), else decodes
greedily; ``do_sample=False`` forces greedy decoding whatever else is given, and
``temperature=0`` always means greedy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lego.generate.penalties import (
    FrequencyPenalty,
    LogitBias,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
)
from lego.generate.processor_list import LogitsProcessorList
from lego.generate.warpers import MinP, Temperature, TopK, TopP
from lego.protocols import (
    Config,
    ConfigError,
    LogitsProcessor,
    check_float,
    check_int,
    did_you_mean,
)

__all__ = ["GenerationConfig", "EarlyStopping"]

EarlyStopping = bool | Literal["never"]
"""Beam search's stopping rule: True, False (a heuristic) or ``"never"`` (canonical)."""

_OWNER = "GenerationConfig"


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(Config):
    """Every decoding setting of [`generate()`][lego.generate.generate], validated on creation.

    A [`lego.protocols.Config`][lego.protocols.Config]: types are checked from the
    annotations (lists become tuples), the ranges and combinations in ``validate()``, and
    it round-trips through ``to_dict()`` / ``from_dict()`` (so it can live in a YAML file).

    Attributes:
        max_new_tokens: How many tokens to generate at most (at least 1).
        do_sample: Sample (True), decode greedily (False), or decide from the sampling
            arguments (None: sample when ``temperature``, ``top_k``, ``top_p`` or ``min_p``
            is given).
        temperature: Divide the logits by it before sampling; 0 means greedy; must not be
            negative.
        top_k: Keep only the ``top_k`` most likely tokens (0 or None: off).
        top_p: Nucleus sampling mass in ``(0, 1]`` (1 or None: off).
        min_p: Keep tokens with probability at least ``min_p`` times the top one.
        repetition_penalty: CTRL's penalty (> 1 discourages repeats; 1 or None: off).
        presence_penalty: Subtracted from the logits of every token already present.
        frequency_penalty: Subtracted per occurrence of a token already present.
        no_repeat_ngram_size: Never repeat an n-gram of this size (0 or None: off).
        logit_bias: Token id to a bias added to its logit (``-inf`` bans it).
        num_beams: Beam search with this many beams (1: no beam search).
        length_penalty: Beam scores are divided by ``generated_length ** length_penalty``.
        early_stopping: Beam search stops when ``num_beams`` hypotheses are finished (True),
            when a heuristic says no better one can come (False), or never early
            (``"never"``), as in transformers.
        eos_token_id: One id or several ids that finish a row.
        pad_token_id: The id written into finished rows (default: the first eos id, else 0).
        stop_strings: Texts that finish a row once generated (needs a tokenizer).
        seed: Seed of a fresh ``torch.Generator`` for reproducible sampling.
        use_cache: Decode on the model's KV cache when it has one (False: recompute the whole
            prefix each step).
        compile: ``torch.compile`` the single-token decode step.
        native_kernels: While generating on the CPU, run the model's ``nn.Linear`` calls of
            up to 8 rows (decode steps at batch <= 8; fp32 and bf16) on the native CPU
            kernels ([`lego.generate.native`][lego.generate.native]: x86-64 Linux with
            AVX-512 and a C compiler), also in the ``compile``d step. None (the default):
            where they can run, else on PyTorch's kernels without a word. True: asked for,
            so where they cannot run a
            [warning][lego.generate.native.NativeKernelsUnavailableWarning] says why (once
            per reason) and PyTorch's kernels run. False: off.
        pack_weights: Run the other bf16 CPU ``nn.Linear`` calls (the prefill) on
            oneDNN-reordered copies of the weights, made for the duration of the
            generation (they cost the bf16 weights' size again; see
            [`decode_linears()`][lego.generate.linears.decode_linears]). Default off.
        num_draft_tokens: Tokens the draft model proposes per step (speculative decoding).
        truncate_prompt: Left-truncate a prompt that does not fit the context (with a
            warning) instead of raising.
    """

    max_new_tokens: int = 128
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    logit_bias: dict[int, float] | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    stop_strings: str | tuple[str, ...] | None = None
    seed: int | None = None
    use_cache: bool = True
    compile: bool = False
    native_kernels: bool | None = None
    pack_weights: bool = False
    num_draft_tokens: int = 4
    truncate_prompt: bool = False

    def validate(self) -> None:
        """Check every range and combination (types are checked from the annotations).

        Raises:
            ConfigError: A value out of range (naming it and what to pass).
        """
        super().validate()
        check_int("max_new_tokens", self.max_new_tokens, minimum=1, owner=_OWNER)
        if self.temperature is not None:
            check_float(
                "temperature",
                self.temperature,
                owner=_OWNER,
                low=0.0,
                hint="use temperature >= 0 (0 means greedy decoding)",
            )
        if self.top_k is not None:
            check_int("top_k", self.top_k, minimum=0, owner=_OWNER)
        if self.top_p is not None:
            TopP(top_p=self.top_p)  # validates (0, 1]
        if self.min_p is not None:
            MinP(min_p=self.min_p)
        if self.repetition_penalty is not None:
            RepetitionPenalty(penalty=self.repetition_penalty)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                check_float(name, value, owner=_OWNER)
        if self.no_repeat_ngram_size is not None:
            check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, minimum=0, owner=_OWNER)
        if self.logit_bias is not None:
            LogitBias(bias=self.logit_bias)
        check_int("num_beams", self.num_beams, minimum=1, owner=_OWNER)
        check_float("length_penalty", self.length_penalty, owner=_OWNER)
        for eos in self.eos_ids:
            check_int("eos_token_id", eos, minimum=0, owner=_OWNER)
        if self.pad_token_id is not None:
            check_int("pad_token_id", self.pad_token_id, minimum=0, owner=_OWNER)
        for text in self.stop_string_list:
            if not text:
                raise ConfigError(
                    f"{_OWNER}: stop strings must be non-empty strings, got {text!r}",
                    key="stop_strings",
                )
        if self.seed is not None:
            check_int("seed", self.seed, minimum=0, maximum=2**64 - 1, owner=_OWNER)
        check_int("num_draft_tokens", self.num_draft_tokens, minimum=1, owner=_OWNER)

    def check_vocabulary(self, vocab_size: int) -> None:
        """Check the token ids this config names against a model's vocabulary, before decoding.

        Args:
            vocab_size: The model's vocabulary size.

        Raises:
            ConfigError: An ``eos_token_id``, ``pad_token_id`` or ``logit_bias`` id outside
                ``[0, vocab_size)``, or a ``logit_bias`` that bans every token (nothing
                could be generated).

        Example:
            >>> GenerationConfig(eos_token_id=50256).check_vocabulary(50257)
            >>> GenerationConfig(eos_token_id=50256).check_vocabulary(1000)
            Traceback (most recent call last):
            ...
            lego.protocols.errors.ConfigError: GenerationConfig: eos_token_id 50256 is outside ...
              where: key 'eos_token_id'
              what to do: use ids in [0, 1000) ...
        """
        named = [("eos_token_id", eos) for eos in self.eos_ids]
        if self.pad_token_id is not None:
            named.append(("pad_token_id", self.pad_token_id))
        named += [("logit_bias", token) for token in sorted(self.logit_bias or {})]
        for key, token in named:
            if token >= vocab_size:
                raise ConfigError(
                    f"{_OWNER}: {key} {token} is outside the model's vocabulary of "
                    f"{vocab_size} ids",
                    key=key,
                    hint=f"use ids in [0, {vocab_size}) (was the id meant for another model "
                    "or tokenizer?)",
                )
        banned = {t for t, bias in (self.logit_bias or {}).items() if bias == float("-inf")}
        if len(banned) >= vocab_size:
            raise ConfigError(
                f"{_OWNER}: logit_bias bans every one of the {vocab_size} tokens (bias -inf), "
                "so nothing can be generated",
                key="logit_bias",
                hint="ban fewer tokens, or use a finite negative bias to discourage them",
            )

    # -- derived settings ------------------------------------------------------------------

    @classmethod
    def from_options(cls, base: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """Return ``base`` (or the defaults) with ``options`` replaced.

        Args:
            base: The starting config; None means the defaults.
            **options: Field names to values; a None value leaves the field as it is in
                ``base`` (or at its default).

        Returns:
            The new, validated config.

        Raises:
            ConfigError: An unknown option (with the closest name) or an invalid value.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for name in options:
            if name not in names:
                raise ConfigError(
                    f"unknown generation option {name!r}",
                    key=name,
                    hint=did_you_mean(name, names),
                )
        changes = {k: v for k, v in options.items() if v is not None}
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (empty when none is set)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return self.eos_token_id

    @property
    def stop_string_list(self) -> tuple[str, ...]:
        """The stop strings as a tuple (empty when none is set)."""
        if self.stop_strings is None:
            return ()
        if isinstance(self.stop_strings, str):
            return (self.stop_strings,)
        return tuple(self.stop_strings)

    @property
    def fill_id(self) -> int:
        """The id written after a row finished: ``pad_token_id``, else the first eos id, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        eos = self.eos_ids
        return eos[0] if eos else 0

    @property
    def sampling(self) -> bool:
        """Whether the next token is sampled (False: the most likely token is taken)."""
        if self.temperature == 0:
            return False
        if self.do_sample is not None:
            return self.do_sample
        return any(
            value is not None for value in (self.temperature, self.top_k, self.top_p, self.min_p)
        )

    def processors(
        self, extra: Sequence[LogitsProcessor] = (), *, include_warpers: bool = True
    ) -> LogitsProcessorList:
        """The logits processors this config asks for, in transformers' order.

        Penalties first (logit bias, repetition, presence, frequency, no-repeat n-gram), then
        ``extra``, then, when sampling, the warpers (temperature, top-k, top-p, min-p).

        Args:
            extra: User processors, applied after the penalties.
            include_warpers: Add the sampling warpers when ``sampling`` is True.

        Returns:
            The processors (possibly empty).
        """
        out: list[LogitsProcessor] = []
        if self.logit_bias:
            out.append(LogitBias(bias=self.logit_bias))
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            out.append(RepetitionPenalty(penalty=self.repetition_penalty))
        if self.presence_penalty:
            out.append(PresencePenalty(penalty=self.presence_penalty))
        if self.frequency_penalty:
            out.append(FrequencyPenalty(penalty=self.frequency_penalty))
        if self.no_repeat_ngram_size:
            out.append(NoRepeatNGram(ngram_size=self.no_repeat_ngram_size))
        out.extend(extra)
        if include_warpers and self.sampling:
            if self.temperature is not None and self.temperature != 1.0:
                out.append(Temperature(temperature=self.temperature))
            if self.top_k:
                out.append(TopK(top_k=self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                out.append(TopP(top_p=self.top_p))
            if self.min_p:
                out.append(MinP(min_p=self.min_p))
        return LogitsProcessorList(out)
