"""lego-eval: measure any causal LM the way the field does.

With ``model`` any ``lego.protocols.CausalLM`` and ``tokenizer`` its tokenizer::

    from lego.eval import CoreTask, evaluate_core, text_perplexity

    result = text_perplexity(model, tokenizer, held_out_text, max_length=1024, stride=512)
    print(result.perplexity, result.bits_per_byte)

    task = CoreTask(name="arc_easy", path="arc_easy.jsonl", task_type="multiple_choice")
    print(evaluate_core(model, tokenizer, [task]).to_markdown())

- Perplexity: [`perplexity()`][lego.eval.perplexity.perplexity] (token ids),
  [`text_perplexity()`][lego.eval.perplexity.text_perplexity] (text, with bits per byte),
  [`split_perplexity()`][lego.eval.perplexity.split_perplexity] (a prepared dataset's split),
  their [`PerplexityResult`][lego.eval.perplexity.PerplexityResult], and the windows,
  [`sliding_windows()`][lego.eval.perplexity.sliding_windows]: every token scored exactly once.
- CORE-style tasks: [`CoreTask`][lego.eval.core.CoreTask],
  [`evaluate_core()`][lego.eval.core.evaluate_core] /
  [`evaluate_task()`][lego.eval.core.evaluate_task],
  [`CoreResult`][lego.eval.core.CoreResult], [`TaskScore`][lego.eval.core.TaskScore].
- LLM-as-judge: [`judge_answers()`][lego.eval.judge.judge_answers] (single 1-10 ratings or
  pairwise with positions swapped) through a
  [`JudgeClient`][lego.eval.judge_client.JudgeClient] (any OpenAI-compatible endpoint), its
  [`JudgeResult`][lego.eval.judge.JudgeResult], templates from
  [`load_template()`][lego.eval.judge.load_template].
- lm-evaluation-harness: ``lego.eval.harness`` (with the ``harness`` extra; never imported
  here).
"""

from lego.eval.__about__ import __version__
from lego.eval.core import (
    CoreResult,
    CoreTask,
    TaskScore,
    evaluate_core,
    evaluate_task,
    load_examples,
    render_prompts,
)
from lego.eval.judge import (
    JudgeResult,
    JudgeTemplate,
    Question,
    judge_answers,
    load_answers,
    load_questions,
    load_template,
)
from lego.eval.judge_client import JudgeClient, JudgeError
from lego.eval.perplexity import (
    PerplexityResult,
    Window,
    perplexity,
    sliding_windows,
    split_perplexity,
    text_perplexity,
)

__all__ = [
    "__version__",
    # perplexity
    "perplexity",
    "text_perplexity",
    "split_perplexity",
    "PerplexityResult",
    "sliding_windows",
    "Window",
    # CORE
    "CoreTask",
    "evaluate_core",
    "evaluate_task",
    "CoreResult",
    "TaskScore",
    "load_examples",
    "render_prompts",
    # LLM-as-judge
    "judge_answers",
    "JudgeClient",
    "JudgeError",
    "JudgeResult",
    "JudgeTemplate",
    "Question",
    "load_questions",
    "load_answers",
    "load_template",
]
