"""[`generate()`][lego.generate.generate]: prompt ids in, prompt plus new ids out.

One function for every strategy, with transformers' argument names: greedy by default,
sampling (temperature, top-k, top-p, min-p), penalties, beam search, and speculative
decoding with a draft model. It works on any [`CausalLM`][lego.protocols.CausalLM]: on the
model's KV cache when it is a [`CachedCausalLM`][lego.protocols.CachedCausalLM], otherwise by
recomputing the prefix each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lego.generate.beam import beam_search
from lego.generate.config import EarlyStopping, GenerationConfig
from lego.generate.decoding import Decoding
from lego.generate.linears import linear_kernels
from lego.generate.prompt import prepare_prompt
from lego.generate.runner import has_kv_cache
from lego.generate.stopping import StopStrings
from lego.protocols import CausalLM, ConfigError, LogitsProcessor, Tokenizer

__all__ = ["generate", "start_decoding"]


def decode_rows(
    model: CausalLM, input_ids: Tensor, config: GenerationConfig, *, speculative: bool
) -> int:
    """The fewest rows one decode step of this generation feeds the model's linear layers.

    Batch times beams, times the tokens fed per step: one, ``num_draft_tokens + 1`` when a
    draft model proposes them, and the whole prefix again without a KV cache. It decides
    whether the native kernels (up to ``MAX_ROWS`` rows) have anything to do.
    """
    shape: tuple[int, ...] = tuple(getattr(input_ids, "shape", ()))  # checked later
    batch = shape[0] if len(shape) == 2 else 1
    tokens = config.num_draft_tokens + 1 if speculative else 1
    if not (config.use_cache and has_kv_cache(model)):
        tokens += shape[-1] if shape else 0
    return batch * config.num_beams * tokens


def _eval_mode(model: CausalLM) -> bool:
    """Put an ``nn.Module`` in eval mode; return whether it was training."""
    was_training = bool(getattr(model, "training", False))
    if was_training and isinstance(model, torch.nn.Module):
        model.train(False)
    return was_training


def start_decoding(
    model: CausalLM,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    attention_mask: Tensor | None = None,
    logits_processor: Sequence[LogitsProcessor] = (),
    tokenizer: Tokenizer | None = None,
    generator: torch.Generator | None = None,
    draft_model: CausalLM | None = None,
) -> Decoding:
    """Validate everything and set up a greedy, sampled or speculative run (no beams).

    Iterate the returned [`Decoding`][lego.generate.Decoding] (inside ``torch.inference_mode()``)
    to generate; [`generate()`][lego.generate.generate] and [`stream()`][lego.generate.stream]
    are built on it.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM].
        input_ids: Prompt ids, ``(B, P)`` (or ``(P,)``).
        config: The decoding settings.
        attention_mask: ``(B, P)``, 1 real and 0 left padding; None means no padding.
        logits_processor: Extra processors, applied after the built-in penalties.
        tokenizer: Needed for stop strings.
        generator: Random generator for sampling; None makes one from ``config.seed`` (or
            uses torch's global generator without a seed).
        draft_model: Draft model for speculative decoding.

    Returns:
        The run, not started.

    Raises:
        ConfigError: Bad settings, ids (``eos_token_id``, ``pad_token_id``, ``logit_bias``)
            outside the model's vocabulary, a prompt that does not fit, stop strings without
            a tokenizer.
        DataError: A malformed prompt or mask, or prompt ids outside the vocabulary.
    """
    config.check_vocabulary(model.config.vocab_size)
    prompt = prepare_prompt(
        input_ids,
        attention_mask,
        context_length=model.config.context_length,
        max_new_tokens=config.max_new_tokens,
        truncate=config.truncate_prompt,
        vocab_size=model.config.vocab_size,
    )
    stop = None
    if config.stop_string_list:
        if tokenizer is None:
            raise ConfigError(
                "stop_strings need a tokenizer to decode the generated tokens",
                key="stop_strings",
                hint="pass tokenizer=... to generate()",
            )
        stop = StopStrings(tokenizer=tokenizer, stop_strings=config.stop_string_list)
    if generator is None and config.seed is not None and config.sampling:
        generator = torch.Generator(device=prompt.input_ids.device)
        generator.manual_seed(config.seed)
    return Decoding(
        model=model,
        prompt=prompt,
        config=config,
        processors=config.processors(logits_processor),
        generator=generator,
        stop=stop,
        draft_model=draft_model,
    )


def generate(
    model: CausalLM,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    logit_bias: Mapping[int, float] | None = None,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: EarlyStopping | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    logits_processor: Sequence[LogitsProcessor] = (),
    draft_model: CausalLM | None = None,
    num_draft_tokens: int | None = None,
    use_cache: bool | None = None,
    compile: bool | None = None,
    native_kernels: bool | None = None,
    pack_weights: bool | None = None,
    truncate_prompt: bool | None = None,
    generation_config: GenerationConfig | None = None,
) -> Tensor:
    """Generate continuations of a batch of prompts.

    Greedy unless a sampling argument (``temperature``, ``top_k``, ``top_p``, ``min_p``) is
    given or ``do_sample=True``; ``temperature=0`` is greedy. See
    [`GenerationConfig`][lego.generate.GenerationConfig] for every setting.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM] (put in eval mode for the call).
        input_ids: Prompt ids, ``(B, P)`` (or ``(P,)`` for one prompt), left-padded.
        attention_mask: ``(B, P)``: 1 for real tokens, 0 for left padding.
        max_new_tokens: Tokens to generate at most.
        do_sample: Force sampling (True) or greedy decoding (False).
        temperature: Sampling temperature (0: greedy).
        top_k: Sample among the ``top_k`` most likely tokens.
        top_p: Nucleus mass in ``(0, 1]``.
        min_p: Relative probability floor in ``[0, 1]``.
        repetition_penalty: CTRL's penalty on tokens already present.
        presence_penalty: Subtracted from the logits of tokens already present.
        frequency_penalty: Subtracted per occurrence of a token.
        no_repeat_ngram_size: Never repeat an n-gram of this size.
        logit_bias: Token id to a bias added to its logit.
        num_beams: Beam search with this many beams.
        length_penalty: Beam scores are divided by ``generated_length ** length_penalty``.
        early_stopping: Beam search's stopping rule (True, False or ``"never"``).
        eos_token_id: Id(s) that finish a row.
        pad_token_id: Written into finished rows (default: the first eos id).
        stop_strings: Texts that finish a row (needs ``tokenizer``).
        tokenizer: Decodes tokens for stop strings.
        seed: Seed for reproducible sampling.
        generator: A ``torch.Generator`` for sampling (instead of ``seed``).
        logits_processor: Extra processors (transformers-compatible signature).
        draft_model: A small model with the same vocabulary: speculative decoding (greedy,
            batch 1), same output as plain greedy decoding.
        num_draft_tokens: Tokens the draft proposes per step.
        use_cache: Decode on the model's KV cache (False: recompute the prefix each step).
        compile: ``torch.compile`` the decode step.
        native_kernels: The native CPU decode kernels
            ([`lego.generate.native`][lego.generate.native]) for decode steps' linear
            layers: None (default) where they can run, else PyTorch's kernels silently;
            True asks for them and
            [warns][lego.generate.native.NativeKernelsUnavailableWarning] where they cannot
            run; False turns them off.
        pack_weights: Run the other bf16 CPU linear calls (the prefill) on oneDNN-reordered
            copies of the weights (default off: the copies cost memory).
        truncate_prompt: Left-truncate a prompt that does not fit the context, with a
            warning, instead of raising.
        generation_config: A config to start from; the keyword arguments given here that are
            not None replace its fields (None everywhere means the
            [`GenerationConfig`][lego.generate.GenerationConfig] defaults: 128 new tokens, no
            beams, cache on).

    Returns:
        The prompt followed by the generated tokens, ``(B, P + n)`` where ``n <=
        max_new_tokens`` is the number of steps run (fewer when every row finished early);
        rows that finished early are filled with ``pad_token_id``.

    Raises:
        ConfigError: Invalid settings (``top_p`` outside ``(0, 1]``, negative temperature,
            ``num_beams < 1``, ``max_new_tokens < 1``...) or a prompt longer than the
            context.
        DataError: An empty or malformed prompt.

    Example:
        Any module with the ``CausalLM`` call and a ``config`` works; a model without
        ``new_kv_cache`` is run on the whole prefix every step:

        >>> import torch
        >>> from torch import nn
        >>> from lego.protocols import ModelConfig
        >>> class Bigram(nn.Module):  # the next token depends on the last one only
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.config = ModelConfig(vocab_size=10, context_length=32)
        ...         self.table = nn.Embedding(10, 10)
        ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
        ...         return self.table(ids)  # (B, T, vocab_size)
        >>> _ = torch.manual_seed(0)
        >>> model, ids = Bigram().eval(), torch.tensor([[1, 2, 3]])
        >>> generate(model, ids, max_new_tokens=4).shape  # greedy
        torch.Size([1, 7])
        >>> out = generate(model, ids, max_new_tokens=4, temperature=0.8, top_p=0.95, seed=0)
        >>> torch.equal(out, generate(model, ids, max_new_tokens=4, temperature=0.8,
        ...                           top_p=0.95, seed=0))  # seeded: reproducible
        True
    """
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "logit_bias": logit_bias,
        "num_beams": num_beams,
        "length_penalty": length_penalty,
        "early_stopping": early_stopping,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "stop_strings": stop_strings,
        "seed": seed,
        "use_cache": use_cache,
        "compile": compile,
        "native_kernels": native_kernels,
        "pack_weights": pack_weights,
        "num_draft_tokens": num_draft_tokens,
        "truncate_prompt": truncate_prompt,
    }
    config = GenerationConfig.from_options(generation_config, **options)
    was_training = _eval_mode(model)
    try:
        # The engine's routing of the model's nn.Linear calls, for this generation only.
        routing = linear_kernels(
            model,
            native=config.native_kernels,
            pack=config.pack_weights,
            rows=decode_rows(model, input_ids, config, speculative=draft_model is not None),
        )
        with torch.inference_mode(), routing:
            if config.num_beams > 1:
                if draft_model is not None:
                    raise ConfigError(
                        "speculative decoding (draft_model) cannot be combined with beam search",
                        key="draft_model",
                    )
                config.check_vocabulary(model.config.vocab_size)
                prompt = prepare_prompt(
                    input_ids,
                    attention_mask,
                    context_length=model.config.context_length,
                    max_new_tokens=config.max_new_tokens,
                    truncate=config.truncate_prompt,
                    vocab_size=model.config.vocab_size,
                )
                processors = config.processors(logits_processor, include_warpers=False)
                return beam_search(model, prompt, config, processors)
            run = start_decoding(
                model,
                input_ids,
                config,
                attention_mask=attention_mask,
                logits_processor=logits_processor,
                tokenizer=tokenizer,
                generator=generator,
                draft_model=draft_model,
            )
            for _ in run:
                pass
            return run.tokens[:, : run.length].clone()
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train(True)
