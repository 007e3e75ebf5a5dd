"""The ``legollm`` command: one entry point for the recipes that compose the bricks.

    legollm pipeline --config examples/pipelines/tiny.yaml     # raw text -> model + report
    legollm pretrain --config tiny max_steps=300 optim.lr=1e-3  # pretrain from a YAML config
    legollm finetune --config examples/align/sft-tiny.yaml      # SFT: full, LoRA or QLoRA
    legollm align dpo --config examples/align/dpo-tiny.yaml     # preference tuning (DPO...)
    legollm align reward --config examples/align/reward-tiny.yaml  # a reward model
    legollm align grpo --config examples/align/grpo-tiny.yaml   # GRPO with verifiable rewards
    legollm align ppo --config examples/align/ppo-tiny.yaml     # RLHF: PPO, a reward model
    legollm generate --model runs/tiny --prompt "def "          # continue a prompt
    legollm chat --model runs/sft --template chatml              # talk to a model
    legollm serve --model runs/sft                               # OpenAI API + chat page
    legollm eval harness --model runs/sft --tasks lego_offline   # benchmark tasks, offline
    legollm eval core --model runs/sft --tasks lego_offline      # CORE-style scores
    legollm eval judge --model runs/sft --questions q.jsonl --judge-url URL --judge-model M
    legollm configs                                              # the shipped configs

Configs are YAML files (or shipped names) with ``key=value`` overrides, dotted for sections
and converted by each field's type ([`lego.protocols.load_config()`][lego.protocols.load_config]).
Exit codes: 0 done, 2 bad input (one message, no traceback; ``--debug`` shows it), 130 / 143
interrupted by SIGINT / SIGTERM (a checkpoint was saved: the message says how to continue,
``resume=auto`` for ``pretrain``, ``finetune`` and ``align``, the same command for
``pipeline``), 1 a bug.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from lego.protocols import Interrupted, make_parser, run_cli
from lego.recipes.align import (
    DPORecipeConfig,
    GRPORecipeConfig,
    RewardRecipeConfig,
    held_out_accuracy,
    run_dpo,
    run_grpo,
    run_reward,
)
from lego.recipes.configs import read_recipe_config, shipped_configs
from lego.recipes.evaluate import add_eval_command, run_eval
from lego.recipes.finetune import FinetuneConfig, run_finetune
from lego.recipes.generate import add_chat_command, add_generate_command, run_chat, run_generate
from lego.recipes.pipeline import PipelineConfig, run_pipeline
from lego.recipes.ppo import PPORecipeConfig, run_ppo, score_rise
from lego.recipes.pretrain import PretrainConfig, run_pretrain
from lego.recipes.serve import add_serve_command, run_serve
from lego.recipes.tuning import TuningConfig, TuningResult, summary

__all__ = ["build_parser", "main", "PROG"]

PROG = "legollm"

_EXAMPLES = """\
legollm pipeline --config examples/pipelines/tiny.yaml
legollm pretrain --config tiny max_steps=300 optim.lr=1e-3
legollm pretrain --config tiny resume=latest
python examples/align/make_tiny.py runs/align-tiny   # a tiny model and records
legollm finetune --config examples/align/sft-tiny.yaml
legollm align dpo --config examples/align/dpo-tiny.yaml resume=auto
legollm align reward --config examples/align/reward-tiny.yaml
python examples/align/make_grpo_tiny.py runs/grpo-tiny-model
legollm align grpo --config examples/align/grpo-tiny.yaml
legollm align ppo --config examples/align/ppo-tiny.yaml
legollm generate --model runs/tiny --prompt "def " --top-k 40
legollm chat --model runs/sft --template chatml
legollm serve --model runs/sft --port 8000
legollm eval perplexity --model runs/sft --text held-out.txt
legollm eval harness --model runs/sft --tasks lego_offline --limit 20
legollm eval core --model runs/sft --tasks lego_offline
legollm eval judge --model runs/sft --questions q.jsonl --judge-url URL --judge-model M
legollm configs"""


def _config_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help_text: str,
    description: str,
    example: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="a YAML file or a shipped config name")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, dotted for sections (optim.lr=3e-4)"
    )
    return parser


_TUNING = (
    "The model is a model directory, a checkpoint or a run (legollm pipeline / pretrain); "
    "the records are local JSON Lines files. Ctrl-C or SIGTERM saves a checkpoint (exit "
    "130 / 143) and resume=auto continues; at the end out_dir/model holds the model (output: "
    "merged | adapter) and out_dir/curves.png the curves."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``legollm``, with every subcommand."""
    parser = make_parser(
        PROG,
        "LegoLLM: train a tokenizer, pretrain, sample and talk to GPT-style models, one "
        "subcommand per recipe.",
        example=_EXAMPLES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _config_command(
        commands,
        "pipeline",
        help_text="raw text to a chat model: tokenizer, data, pretraining, SFT, DPO (GRPO), "
        "evaluation, report",
        description="Train a model from raw text, then the stages the YAML's sft:, dpo: and "
        "grpo: sections switch on (each from the previous stage's model), and write "
        "runs/<timestamp>/report.md with samples, loss.png, attention.png and stages.png; "
        "runs/<timestamp>/chat is the model to serve. After an interruption, the same "
        "command continues the run (finished stages are not redone).",
        example="legollm pipeline --config examples/pipelines/tiny.yaml max_steps=200 "
        "dpo.enabled=false",
    )
    _config_command(
        commands,
        "pretrain",
        help_text="pretrain a model from a YAML config",
        description="Train from a YAML config (a path or a shipped name: "
        + ", ".join(shipped_configs())
        + "); key=value overrides follow.",
        example="legollm pretrain --config tiny out_dir=runs/a optim.lr=3e-4",
    )
    _config_command(
        commands,
        "finetune",
        help_text="supervised fine-tuning (full, LoRA or QLoRA) of a model on JSONL records",
        description="Fine-tune on messages or prompt/completion records, the completions "
        "trained. " + _TUNING,
        example="legollm finetune --config examples/align/sft-tiny.yaml sft.finetune=lora",
    )
    align = commands.add_parser(
        "align",
        help="alignment: dpo (DPO and its loss types), reward (a reward model), grpo (RL "
        "with verifiable rewards) or ppo (RLHF against a reward model)",
        description="Tune on prompt/chosen/rejected records (dpo, reward), on prompts with "
        "checkable answers (grpo) or on prompts scored by a reward model (ppo). " + _TUNING,
        epilog="examples:\n  legollm align dpo --config examples/align/dpo-tiny.yaml\n"
        "  legollm align reward --config examples/align/reward-tiny.yaml\n"
        "  legollm align grpo --config examples/align/grpo-tiny.yaml\n"
        "  legollm align ppo --config examples/align/ppo-tiny.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    methods = align.add_subparsers(dest="method", required=True, metavar="METHOD")
    _config_command(
        methods,
        "dpo",
        help_text="DPO (or dpo.loss_type: ipo, hinge, robust...) on preference pairs",
        description="Preference optimisation with lego-align's DPOTrainer; the reference is "
        "the disabled LoRA adapter, a frozen copy or precomputed. " + _TUNING,
        example="legollm align dpo --config examples/align/dpo-tiny.yaml dpo.beta=0.2",
    )
    _config_command(
        methods,
        "reward",
        help_text="a reward model (a score head, Bradley-Terry) on preference pairs",
        description="Train a reward model with lego-align's RewardTrainer; out_dir/model "
        "loads in transformers' AutoModelForSequenceClassification. " + _TUNING,
        example="legollm align reward --config examples/align/reward-tiny.yaml",
    )
    _config_command(
        methods,
        "grpo",
        help_text="GRPO: an optional SFT warm-up, then RL on prompts with checkable answers",
        description="Group-relative policy optimisation with lego-align's GRPOTrainer on a "
        "generated task (data: {task: sort}) or prompt/answer records, rewarded by an "
        "exact-answer verifier; logs the held-out accuracy before and after. " + _TUNING,
        example="legollm align grpo --config examples/align/grpo-tiny.yaml grpo.temperature=0.8",
    )
    _config_command(
        methods,
        "ppo",
        help_text="PPO (RLHF): a value head, the KL penalty, GAE, against a reward model",
        description="Proximal policy optimisation with lego-align's PPOTrainer: one "
        "completion per prompt, scored by the reward model that `legollm align reward` "
        "trained (reward_model: its out_dir/model), a per-token KL penalty to the "
        "reference, GAE and clipped policy and value losses; out_dir/model is the policy "
        "with value_head.safetensors. " + _TUNING,
        example="legollm align ppo --config examples/align/ppo-tiny.yaml ppo.kl_coef=0.1",
    )
    add_generate_command(commands)
    add_chat_command(commands)
    add_serve_command(commands)
    add_eval_command(commands)
    commands.add_parser(
        "configs",
        help="list the shipped configs",
        description="Print the names of the configs shipped with legollm (--config NAME).",
    )
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "configs":
        for name in shipped_configs():
            print(name)
        return 0
    if args.command == "generate":
        return run_generate(args, sys.stdout)
    if args.command == "chat":
        return run_chat(args, sys.stdout, sys.stdin)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "eval":
        return run_eval(args, sys.stdout)
    if args.command == "finetune":
        finetune = read_recipe_config(FinetuneConfig, args.config, args.overrides)
        return _tuned(run_finetune(finetune), finetune, ["finetune"], args, _SFT_KEYS)
    if args.command == "align" and args.method == "dpo":
        dpo = read_recipe_config(DPORecipeConfig, args.config, args.overrides)
        return _tuned(run_dpo(dpo), dpo, ["align", "dpo"], args, _DPO_KEYS)
    if args.command == "align" and args.method == "grpo":
        grpo = read_recipe_config(GRPORecipeConfig, args.config, args.overrides)
        tuned = run_grpo(grpo)
        code = _tuned(tuned, grpo, ["align", "grpo"], args, _GRPO_KEYS)
        accuracy = held_out_accuracy(tuned.out_dir) if tuned.finished else None
        if accuracy is not None:
            print(f"held-out accuracy: {accuracy[0]:.3f} before GRPO, {accuracy[1]:.3f} after")
        return code
    if args.command == "align" and args.method == "ppo":
        ppo = read_recipe_config(PPORecipeConfig, args.config, args.overrides)
        tuned = run_ppo(ppo)
        code = _tuned(tuned, ppo, ["align", "ppo"], args, _PPO_KEYS)
        rise = score_rise(tuned.out_dir) if tuned.finished else None
        if rise is not None:
            print(
                f"reward model score: {rise[0]:.3f} over the first steps, {rise[1]:.3f} at the end"
            )
        return code
    if args.command == "align":
        reward = read_recipe_config(RewardRecipeConfig, args.config, args.overrides)
        return _tuned(run_reward(reward), reward, ["align", "reward"], args, _REWARD_KEYS)
    if args.command == "pipeline":
        result = run_pipeline(read_recipe_config(PipelineConfig, args.config, args.overrides))
        if not result.finished:
            what = "" if result.stage == "pretraining" else f"the {result.stage} stage "
            raise Interrupted(
                f"stopped {what}at step {result.step} of {result.max_steps}: checkpoint saved "
                f"in {result.stage_dir or result.run_dir}",
                signum=result.stop_signal or signal.SIGINT,
                hint="run the same command again to continue from the last checkpoint",
            )
        return 0
    config = read_recipe_config(PretrainConfig, args.config, args.overrides)
    state = run_pretrain(config).state
    if state.stop_signal is not None:
        again = [a for a in args.overrides if not a.startswith(("resume=", "overwrite="))]
        command = shlex.join(["legollm", "pretrain", "--config", args.config, *again])
        raise Interrupted(
            f"stopped at step {state.step} of {state.max_steps}: checkpoint saved in "
            f"{config.out_dir}",
            signum=state.stop_signal,
            hint=f"continue with: {command} resume=auto",
        )
    print(
        f"done: step {state.step}/{state.max_steps}, "
        f"loss {state.metrics.get('loss', float('nan')):.4f}"
        + (f", val_loss {state.metrics['val_loss']:.4f}" if "val_loss" in state.metrics else "")
        + f"; run in {config.out_dir}"
    )
    return 0


_SFT_KEYS = {"loss": "loss", "val_loss": "val_loss"}
_DPO_KEYS = {
    "loss": "loss",
    "val_loss": "val_loss",
    "val_rewards/margins": "val_rewards/margins",
    "val_rewards/accuracies": "val_rewards/accuracies",
}
_GRPO_KEYS = {
    "reward": "reward",
    "val_reward": "val_reward",
    "val_accuracy": "val_accuracy",
}
_PPO_KEYS = {
    "objective/scores": "objective/scores",
    "objective/kl": "objective/kl",
    "loss/value_avg": "loss/value_avg",
}
_REWARD_KEYS = {
    "loss": "loss",
    "val_loss": "val_loss",
    "val_margin": "val_margin",
    "val_accuracy": "val_accuracy",
}


def _continue_command(words: list[str], args: argparse.Namespace) -> str:
    again = [a for a in args.overrides if not a.startswith(("resume=", "overwrite="))]
    return shlex.join(["legollm", *words, "--config", args.config, *again, "resume=auto"])


def _tuned(
    result: TuningResult,
    config: TuningConfig,
    words: list[str],
    args: argparse.Namespace,
    keys: dict[str, str],
) -> int:
    """Exit 130 / 143 with the command that continues, or print the outcome."""
    state = result.state
    if not result.finished:
        raise Interrupted(
            f"stopped at step {state.step} of {state.max_steps}: checkpoint saved in "
            f"{config.out_dir}",
            signum=state.stop_signal or signal.SIGINT,
            hint=f"continue with: {_continue_command(words, args)}",
        )
    where = f"; model in {result.model_dir}" if result.model_dir is not None else ""
    print(f"done: {summary(state, keys)}{where}")
    return 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point of ``legollm``.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    sys.exit(run_cli(_main, None if argv is None else list(argv), prog=PROG))


if __name__ == "__main__":
    main()
