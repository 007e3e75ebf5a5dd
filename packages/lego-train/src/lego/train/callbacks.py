"""Ready-made callbacks: text samples during training.

[`SampleCallback`][lego.train.callbacks.SampleCallback] decodes a few tokens from a prompt
every N steps so the log shows what the model has learned. It samples with a function it is
given (the ``sampler``: legollm passes lego-generate's KV-cached ``generate``), or with
[`sample_tokens()`][lego.train.callbacks.sample_tokens], a plain top-k loop over the model's
full forward pass. Either way the sample is drawn from a private ``torch.Generator``, so
training's random state (and hence exact resume) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lego.protocols import TrainerState

__all__ = ["SampleCallback", "Sampler", "sample_tokens"]


class Sampler(Protocol):
    """Draws a continuation: ``sampler(model, input_ids, **settings) -> ids``.

    The keyword arguments are those of [`sample_tokens()`][lego.train.callbacks.sample_tokens]
    (``max_new_tokens``, ``top_k``, ``temperature``, ``seed``), which are also
    ``lego.generate.generate``'s names; the result holds prompt and continuation,
    ``(B, T + new)``.
    """

    def __call__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int,
        top_k: int,
        temperature: float,
        seed: int,
    ) -> torch.Tensor:
        """Return prompt and continuation, ``(B, T + max_new_tokens)``."""
        ...


def sample_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    top_k: int,
    temperature: float,
    seed: int,
) -> torch.Tensor:
    """Sample a continuation with the model's full forward pass (no cache).

    Args:
        model: A causal LM (``model(ids) -> logits (B, T, V)``).
        input_ids: The prompt, shape ``(B, T)``.
        max_new_tokens: Tokens to add.
        top_k: Sample among the ``top_k`` most likely tokens (0: all).
        temperature: Softmax temperature (0: greedy).
        seed: Seed of the private generator.

    Returns:
        Prompt and continuation, shape ``(B, T + max_new_tokens)``.
    """
    generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    context = getattr(getattr(model, "config", None), "context_length", None)
    ids = input_ids
    for _ in range(max_new_tokens):
        window = ids if not isinstance(context, int) else ids[:, -context:]
        logits = model(window)[:, -1, :].float()  # (B, V)
        if temperature <= 0:
            next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            if 0 < top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)  # (B, V)
            next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)  # (B, T + 1)
    return ids


class SampleCallback:
    """Print a short sample from a prompt every ``every`` steps and at the end.

    A [`TrainerCallback`][lego.protocols.TrainerCallback] (structurally).

    Args:
        model: The (unwrapped) model being trained.
        prompt_ids: The prompt's token ids.
        decode: Turns ids into text (e.g. ``tokenizer.decode``).
        every: Sample every this many steps (0: only at the end).
        max_new_tokens: Tokens to generate.
        top_k: Top-k sampling.
        temperature: Sampling temperature.
        seed: The sample's seed (a private generator; training's RNG is untouched).
        emit: Where the text goes (default: ``print``).
        sampler: Draws the continuation (a [`Sampler`][lego.train.callbacks.Sampler], e.g.
            ``lego.generate.generate``); default
            [`sample_tokens()`][lego.train.callbacks.sample_tokens].

    Attributes:
        samples: ``(step, text)`` of every sample drawn.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        prompt_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        every: int = 0,
        max_new_tokens: int = 48,
        top_k: int = 40,
        temperature: float = 0.8,
        seed: int = 0,
        emit: Callable[[str], None] | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.decode = decode
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.temperature = temperature
        self.seed = seed
        self.emit = emit if emit is not None else print
        self.sampler: Sampler = sampler if sampler is not None else sample_tokens
        self.samples: list[tuple[int, str]] = []

    def sample(self, step: int) -> str:
        """Draw one sample now and emit it.

        Args:
            step: The step it is labelled with.

        Returns:
            The decoded continuation (the prompt is not repeated).
        """
        device = next(self.model.parameters()).device
        prompt = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)  # (1, T)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ids = self.sampler(
                    self.model,
                    prompt,
                    max_new_tokens=self.max_new_tokens,
                    top_k=self.top_k,
                    temperature=self.temperature,
                    seed=self.seed,
                )
        finally:
            self.model.train(was_training)
        new = [int(t) for t in ids[0, len(self.prompt_ids) :].tolist()]
        text = self.decode(new)
        self.samples.append((step, text))
        self.emit(f"sample @ step {step}: {self.decode(self.prompt_ids)}{text}")
        return text

    def on_train_begin(self, state: TrainerState) -> None:
        """Nothing to do at the start."""

    def on_step_end(self, state: TrainerState) -> None:
        """Sample every ``every`` steps."""
        if self.every and state.step % self.every == 0:
            self.sample(state.step)

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Nothing to do at evaluations."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Nothing to do at saves."""

    def on_train_end(self, state: TrainerState) -> None:
        """Sample once at the end (unless the last step just sampled)."""
        if not (self.every and state.step % self.every == 0):
            self.sample(state.step)
