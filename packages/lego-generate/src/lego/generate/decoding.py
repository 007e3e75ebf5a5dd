"""[`Decoding`][lego.generate.Decoding]: one greedy, sampled or speculative generation run.

The run writes into one preallocated ``(B, P + max_new_tokens)`` buffer (never
concatenating the sequence step by step), feeds the model through a
[`ModelRunner`][lego.generate.ModelRunner] (one prefill, then one token per step on the KV
cache), and finishes rows independently: a row that produced an end-of-sequence id or a stop
string gets ``pad_token_id`` from then on, and the run ends when every row has finished or
``max_new_tokens`` were generated.

For rollouts the run can also record, for every generated token, its log-probability
(``record_logprobs``: under the model's distribution, ``"raw"``, or under the processed scores
actually sampled from, ``"processed"``) and the step at which each row finished; with
``shared_rows=n`` consecutive groups of ``n`` rows hold the same prompt, which is prefilled
once per group (see
[`ModelRunner.prefill_shared()`][lego.generate.runner.ModelRunner.prefill_shared]).

With a draft model (speculative decoding, batch 1, greedy) each step lets the draft propose
``num_draft_tokens`` tokens, the target checks them all in one forward, keeps the longest
prefix it agrees with plus its own next token, and both caches are cropped back to the
accepted length: the output is exactly the target's greedy output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from lego.generate.config import GenerationConfig
from lego.generate.logprobs import gather_logprobs
from lego.generate.processor_list import LogitsProcessorList
from lego.generate.prompt import Prompt
from lego.generate.runner import ModelRunner
from lego.generate.stopping import StopStrings
from lego.protocols import CausalLM, CompatibilityError, ConfigError, DataError, check_int

__all__ = ["Decoding", "LogprobMode", "check_scores"]

LogprobMode = Literal["raw", "processed"]
"""Which distribution a recorded log-probability is taken under: the model's logits
(``"raw"``) or the scores after the logits processors and warpers (``"processed"``)."""


def check_scores(logits: Tensor, scores: Tensor, *, step: int) -> None:
    """Refuse to choose a token from scores where none can be chosen.

    Without this check a NaN logit would be picked by ``argmax`` (garbage, exit 0) and make
    ``torch.multinomial`` fail, and a row whose every score is ``-inf`` would silently give
    token 0. Costs one reduction over ``(B, V)`` per step: a row's maximum is NaN when
    the row holds a NaN, ``+inf`` when it holds one, ``-inf`` when every score is.

    Args:
        logits: The model's logits for the step, ``(B, V)``.
        scores: The same after the logits processors, ``(B, V)``.
        step: The number of the token being chosen (0 for the first new token), for messages.

    Raises:
        DataError: The model's logits hold NaN or ``+inf`` (its weights or activations are
            not finite).
        ConfigError: The processors left a row with every score ``-inf`` (a ``logit_bias``
            that bans every token, a custom processor) or made a NaN.
    """
    if bool(torch.isfinite(scores.amax(dim=-1)).all()):  # (B,): NaN propagates
        return
    if bool(torch.isnan(logits).any() | torch.isposinf(logits).any()):
        raise DataError(
            f"the model's logits hold NaN or inf at new token {step}",
            tensor="logits",
            hint="its weights or activations are not finite: check the checkpoint "
            "(lego.arch.from_hf(path, check_finite=True) names the tensor), or run it in "
            "float32",
        )
    raise ConfigError(
        f"no token can be chosen at new token {step}: after the logits processors every "
        "score is -inf (or NaN)",
        key="logit_bias",
        hint="ban fewer tokens (a logit_bias of -inf), or check your logits processors",
    )


class Decoding:
    """A generation run over a prompt batch; iterate it to get the new tokens step by step.

    Args:
        model: The model (any [`CausalLM`][lego.protocols.CausalLM]).
        prompt: The validated prompt batch.
        config: The decoding settings (``num_beams`` must be 1; beam search is
            [`beam_search()`][lego.generate.beam_search]).
        processors: Logits processors, warpers included when sampling.
        generator: The random generator for sampling (None: torch's global one).
        stop: Stop strings to watch, or None.
        draft_model: A smaller model with the same vocabulary for speculative decoding.
        record_logprobs: Record each generated token's log-probability in
            ``logprobs`` (``"raw"`` or ``"processed"``, see the module docstring); None
            records nothing.
        shared_rows: Consecutive groups of this many rows hold the same prompt (prompt-major
            order); each group's prompt is prefilled once. 1: every row is prefilled.

    Attributes:
        tokens: ``(B, P + max_new_tokens)``: the prompt, then the generated tokens
            (``tokens[:, :length]`` are written).
        finished: ``(B,)`` bool: the rows that produced an end-of-sequence id or a stop
            string.
        finish_lengths: ``(B,)`` long: generated tokens of each finished row, the finishing
            token included (``max_new_tokens`` for rows still running).
        logprobs: ``(B, max_new_tokens)`` float32 with ``record_logprobs`` (0 after a row
            finished), else None.

    Raises:
        ConfigError: Speculative decoding with sampling or more than one row, or beams;
            ``shared_rows`` not dividing the batch, or combined with a draft model.
        CompatibilityError: The draft model's vocabulary differs from the model's.
    """

    def __init__(
        self,
        *,
        model: CausalLM,
        prompt: Prompt,
        config: GenerationConfig,
        processors: LogitsProcessorList,
        generator: torch.Generator | None = None,
        stop: StopStrings | None = None,
        draft_model: CausalLM | None = None,
        record_logprobs: LogprobMode | None = None,
        shared_rows: int = 1,
    ) -> None:
        if config.num_beams != 1:
            raise ConfigError(
                "Decoding runs greedy, sampled or speculative decoding; use beam_search() for "
                f"num_beams={config.num_beams}",
                key="num_beams",
            )
        b, p = prompt.batch_size, prompt.length
        check_int("shared_rows", shared_rows, minimum=1, owner="Decoding")
        if b % shared_rows:
            raise ConfigError(
                f"Decoding: shared_rows={shared_rows} needs a batch of whole groups of rows, "
                f"got {b} rows",
                key="shared_rows",
                hint="repeat each prompt shared_rows times (prompt-major)",
            )
        if record_logprobs not in (None, "raw", "processed"):
            raise ConfigError(
                f"Decoding: record_logprobs must be 'raw', 'processed' or None, got "
                f"{record_logprobs!r}",
                key="record_logprobs",
            )
        if draft_model is not None and (shared_rows > 1 or record_logprobs is not None):
            raise ConfigError(
                "speculative decoding (draft_model) neither shares prefills nor records "
                "log-probabilities",
                key="draft_model",
                hint="drop the draft model for rollouts",
            )
        self.record_logprobs = record_logprobs
        self.shared_rows = shared_rows
        self.config = config
        self.prompt_length = p
        self.max_length = p + config.max_new_tokens
        self.processors = processors
        self.generator = generator
        self.stop = stop
        self.sampling = config.sampling
        device = prompt.input_ids.device
        self.tokens = torch.full(
            (b, self.max_length), config.fill_id, dtype=torch.long, device=device
        )  # (B, P + N)
        self.tokens[:, :p] = prompt.input_ids
        self.length = p
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)  # (B,)
        self.finish_lengths = torch.full(
            (b,), config.max_new_tokens, dtype=torch.long, device=device
        )  # (B,)
        self.logprobs: Tensor | None = None
        if record_logprobs is not None:
            self.logprobs = torch.zeros(
                (b, config.max_new_tokens), dtype=torch.float32, device=device
            )  # (B, N)
        self._step_logprobs: Tensor | None = None
        self._eos = (
            torch.tensor(config.eos_ids, dtype=torch.long, device=device)
            if config.eos_ids
            else None
        )
        self._fill = torch.tensor(config.fill_id, dtype=torch.long, device=device)
        self._generated: list[list[int]] = [[] for _ in range(b)]
        self._prompt = prompt
        self.runner = ModelRunner(
            model=model,
            batch_size=b,
            max_seq_len=self.max_length,
            attention_mask=prompt.attention_mask,
            use_cache=config.use_cache,
            compile=config.compile,
            device=device,
        )
        self.draft: ModelRunner | None = None
        if draft_model is not None:
            self.draft = self._draft_runner(model, draft_model, prompt)

    def _draft_runner(self, model: CausalLM, draft: CausalLM, prompt: Prompt) -> ModelRunner:
        if self.sampling:
            raise ConfigError(
                "speculative decoding (draft_model) is greedy only; it cannot sample",
                key="draft_model",
                hint="drop the sampling arguments or the draft model",
            )
        if prompt.batch_size != 1:
            raise ConfigError(
                f"speculative decoding (draft_model) decodes one row at a time, got "
                f"{prompt.batch_size}",
                key="draft_model",
                hint="call generate() once per prompt when using a draft model",
            )
        if draft.config.vocab_size != model.config.vocab_size:
            raise CompatibilityError(
                f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the "
                f"model's ({model.config.vocab_size})",
                key="draft_model",
                hint="use a draft model trained with the same tokenizer",
            )
        if self.max_length > draft.config.context_length:
            raise ConfigError(
                f"the draft model's context ({draft.config.context_length}) is shorter than the "
                f"prompt plus max_new_tokens ({self.max_length})",
                key="draft_model",
            )
        return ModelRunner(
            model=draft,
            batch_size=1,
            max_seq_len=self.max_length,
            attention_mask=prompt.attention_mask,
            use_cache=self.config.use_cache,
            device=prompt.input_ids.device,
        )

    # -- choosing tokens ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether every row finished or the buffer is full."""
        return self._is_done()

    def _is_done(self) -> bool:
        return self.length >= self.max_length or bool(self.finished.all())

    def _choose(self, logits: Tensor, context: Tensor) -> Tensor:
        """Pick the next token of every row from its logits ``(B, V)`` -> ``(B,)``."""
        scores = logits
        if self.processors or self.sampling:
            scores = self.processors(context, logits.float())  # (B, V)
        check_scores(logits, scores, step=int(context.shape[1]) - self.prompt_length)
        if self.sampling:
            probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
            chosen = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (B,)
        else:
            chosen = scores.argmax(dim=-1)  # (B,)
        if self.record_logprobs is not None:
            source = logits if self.record_logprobs == "raw" else scores
            self._step_logprobs = gather_logprobs(source, chosen)  # (B,) float32
        return chosen

    def _append(self, new: Tensor) -> None:
        """Write one token per row ``(B,)`` at the end and update which rows finished."""
        watch = self._eos is not None or self.stop is not None
        if watch:
            new = torch.where(self.finished, self._fill, new)  # (B,)
        step = self.length - self.prompt_length
        if self.logprobs is not None and self._step_logprobs is not None:
            self.logprobs[:, step] = self._step_logprobs.masked_fill(self.finished, 0.0)
        self.tokens[:, self.length] = new
        self.length += 1
        if not watch:
            return
        before = self.finished.clone()
        if self._eos is not None:
            self.finished |= torch.isin(new, self._eos)
        if self.stop is not None:
            for row, token in enumerate(new.tolist()):
                if bool(self.finished[row]):
                    continue
                self._generated[row].append(token)
                if self.stop.hit(self._generated[row]):
                    self.finished[row] = True
        self.finish_lengths.masked_fill_(self.finished & ~before, step + 1)

    # -- the runs -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Tensor]:
        """Generate; yield the new tokens of every row after each step, ``(B, n)``.

        ``n`` is 1 for plain decoding and up to ``num_draft_tokens + 1`` for speculative
        steps. Finished rows carry ``pad_token_id``. After the iteration
        ``tokens[:, :length]`` is the prompt plus every generated token.
        """
        if self.draft is not None:
            yield from self._speculative()
            return
        p, n = self.prompt_length, self.shared_rows
        if n > 1:
            prompts = self.tokens[::n, :p]  # (B / n, P): each group's prompt once
            last = self.runner.prefill_shared(prompts, repeats=n)[:, -1]  # (B / n, V)
            logits = last.repeat_interleave(n, dim=0)  # (B, V)
        else:
            logits = self.runner.forward(self.tokens[:, :p])[:, -1]  # (B, V)
        while True:
            self._append(self._choose(logits, self.tokens[:, : self.length]))
            yield self.tokens[:, self.length - 1 : self.length]
            if self.done:
                return
            logits = self.runner.forward(self.tokens[:, self.length - 1 : self.length])[:, -1]

    def _speculative(self) -> Iterator[Tensor]:
        assert self.draft is not None
        target, draft = self.runner, self.draft
        p = self.prompt_length
        logits = target.forward(self.tokens[:, :p])[:, -1]  # (1, V)
        self._append(self._choose(logits, self.tokens[:, :p]))
        yield self.tokens[:, p : p + 1]
        while not self._is_done():
            n = self.length
            k = min(self.config.num_draft_tokens, self.max_length - n - 1)
            seq = self.tokens[:, :n]  # (1, n)
            proposals: list[Tensor] = []
            feed = self.tokens[:, draft.length : n]  # (1, >= 1)
            for _ in range(k):
                draft_logits = draft.forward(feed)[:, -1]  # (1, V)
                context = torch.cat([seq, *(x[:, None] for x in proposals)], dim=1)
                proposal = self._choose(draft_logits, context)  # (1,)
                proposals.append(proposal)
                feed = proposal[:, None]  # (1, 1)
            block = torch.cat([self.tokens[:, n - 1 : n], *(x[:, None] for x in proposals)], dim=1)
            verify = target.forward(block)  # (1, k + 1, V)
            accepted: list[Tensor] = []
            for j in range(k + 1):
                context = torch.cat([seq, *(x[:, None] for x in accepted)], dim=1)
                choice = self._choose(verify[:, j], context)  # (1,)
                accepted.append(choice)
                if j == k or int(choice) != int(proposals[j]):
                    break
            start = self.length
            for token in accepted:
                self._append(token)
                if self._is_done():
                    break
            target.crop(n + len(accepted) - 1)
            draft.crop(min(draft.length, n + len(accepted) - 1))
            yield self.tokens[:, start : self.length]
