"""lego-generate: every decoding strategy on a KV-cached engine, for any causal LM.

With ``model`` any [`CausalLM`][lego.protocols.CausalLM] (e.g. a lego-arch model), ``ids`` a
``(B, T)`` prompt and ``tokenizer`` any [`Tokenizer`][lego.protocols.Tokenizer] (a runnable
example is in [`generate()`][lego.generate.generate])::

    from lego.generate import generate, stream
    out = generate(model, ids, max_new_tokens=50)                         # greedy
    out = generate(model, ids, max_new_tokens=50, temperature=0.8, top_p=0.95, seed=0)
    out = generate(model, ids, max_new_tokens=50, num_beams=4, length_penalty=1.0)
    out = generate(model, ids, max_new_tokens=50, draft_model=small)       # speculative
    batch = rollout(model, [[1, 2, 3], [4, 5]], n=8, temperature=1.0, seed=0)  # RL rollouts
    for piece in stream(model, tokenizer, "Once upon a time", max_new_tokens=50):
        print(piece, end="", flush=True)

- [`generate()`][lego.generate.generate] / [`stream()`][lego.generate.stream]: the entry points,
  with transformers' argument names; [`GenerationConfig`][lego.generate.GenerationConfig] holds
  the settings.
- [`rollout()`][lego.generate.rollout]: ``n`` completions per prompt sharing one prefill, with
  every token's log-probability and each completion's finish reason, as a
  [`Rollout`][lego.generate.Rollout] of padded training tensors (GRPO / PPO).
- Logits processors (transformers' signature): [`Temperature`][lego.generate.Temperature],
  [`TopK`][lego.generate.TopK], [`TopP`][lego.generate.TopP], [`MinP`][lego.generate.MinP],
  [`RepetitionPenalty`][lego.generate.RepetitionPenalty],
  [`PresencePenalty`][lego.generate.PresencePenalty],
  [`FrequencyPenalty`][lego.generate.FrequencyPenalty],
  [`NoRepeatNGram`][lego.generate.NoRepeatNGram], [`LogitBias`][lego.generate.LogitBias],
  composed by [`LogitsProcessorList`][lego.generate.LogitsProcessorList].
- Log-probabilities: [`chosen_logprobs()`][lego.generate.chosen_logprobs] (the chosen
  token's and the top ``k``, float32, as a [`TokenLogprobs`][lego.generate.TokenLogprobs]).
- The engine: [`ModelRunner`][lego.generate.ModelRunner] (prefill + decode steps on the KV cache,
  or recomputation for models without one), [`Decoding`][lego.generate.Decoding] (greedy,
  sampling, speculative), [`beam_search()`][lego.generate.beam_search].
- Text: [`TextStreamDecoder`][lego.generate.TextStreamDecoder] (whole UTF-8 characters only),
  [`StopStrings`][lego.generate.StopStrings], [`ChatSession`][lego.generate.ChatSession].
"""

from lego.generate.__about__ import __version__
from lego.generate.beam import beam_search
from lego.generate.chat import ChatSession, ConversationTrimmedWarning, chat_prompt_ids
from lego.generate.config import EarlyStopping, GenerationConfig
from lego.generate.decoding import Decoding
from lego.generate.generate import generate, start_decoding
from lego.generate.logprobs import TokenLogprobs, chosen_logprobs
from lego.generate.native import NativeKernelsUnavailableWarning
from lego.generate.penalties import (
    FrequencyPenalty,
    LogitBias,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
)
from lego.generate.processor_list import LogitsProcessorList
from lego.generate.prompt import Prompt, PromptTruncatedWarning, prepare_prompt
from lego.generate.rollout import FinishReason, Rollout, rollout
from lego.generate.runner import ModelRunner, has_kv_cache
from lego.generate.stopping import StopStrings
from lego.generate.streaming import TextStreamDecoder, stream
from lego.generate.warpers import MinP, Temperature, TopK, TopP

__all__ = [
    "__version__",
    # entry points
    "generate",
    "stream",
    "rollout",
    "Rollout",
    "FinishReason",
    "start_decoding",
    "GenerationConfig",
    "EarlyStopping",
    # processors
    "LogitsProcessorList",
    "Temperature",
    "TopK",
    "TopP",
    "MinP",
    "RepetitionPenalty",
    "PresencePenalty",
    "FrequencyPenalty",
    "NoRepeatNGram",
    "LogitBias",
    # log-probabilities
    "chosen_logprobs",
    "TokenLogprobs",
    # engine
    "ModelRunner",
    "has_kv_cache",
    "Decoding",
    "beam_search",
    "Prompt",
    "prepare_prompt",
    "PromptTruncatedWarning",
    "NativeKernelsUnavailableWarning",
    # text
    "StopStrings",
    "TextStreamDecoder",
    "ChatSession",
    "ConversationTrimmedWarning",
    "chat_prompt_ids",
]
