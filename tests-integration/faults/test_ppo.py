"""Faults of ``legollm align ppo`` (issue 20), through real processes.

Every test runs the command as a user would, from ``examples/align/ppo-tiny.yaml`` with
small sizes, on the tiny model and records that ``examples/align/make_tiny.py`` writes and
a reward model that ``legollm align reward`` trains (a few steps) once per module, and
asserts the exit code, one message on stderr without "Traceback", and that every file that
existed before (the model, the reward model, the records) is byte-identical afterwards:

- Ctrl-C (SIGINT) and SIGTERM mid-run: exit 130 / 143 after a checkpoint, the message says
  how to continue, the checkpoint passes the check a resume makes, and ``resume=auto``
  finishes the run and writes the policy with its value head;
- bad settings: a misspelt key (the closest key suggested), a KL estimator PPO does not
  offer, a clip range of 0, ``data.eval`` (PPO has no held-out evaluation);
- the reward model: missing, empty, a language model instead of a reward model, a reward
  model whose tokenizer differs from the policy's: exit 2, one message, before ``out_dir``
  is written.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import harness
import pytest
from rl_faults import assert_refused, assert_saved, checkpoint_step, interrupt_after

from lego.tokenize import RegexBPETokenizer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "align"
SMALL = (
    "progress=plain",
    "log_every=1",
    "plots=false",
    "ppo.prompts_per_step=4",
    "ppo.num_mini_batches=1",
    "ppo.num_ppo_epochs=2",
    "ppo.max_completion_length=4",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/``, the records, and ``reward/model`` (a reward model, 4 steps)."""
    root = tmp_path_factory.mktemp("ppo-tiny")
    made = harness.run([sys.executable, str(EXAMPLES / "make_tiny.py"), str(root)], cwd=root)
    assert made.code == 0, made.stderr
    reward = harness.run(
        harness.command(
            "lego.recipes.cli",
            "align",
            "reward",
            "--config",
            str(EXAMPLES / "reward-tiny.yaml"),
            f"model={root / 'model'}",
            f"data.train={root / 'preferences.jsonl'}",
            "data.eval=''",
            f"out_dir={root / 'reward'}",
            "max_steps=4",
            "checkpoint_every=0",
            "eval_every=0",
            "progress=none",
            "plots=false",
        ),
        cwd=root,
    )
    assert reward.code == 0, reward.stderr
    return root


def ppo(tiny: Path, out: Path, *extra: str) -> list[str]:
    """The command of the example config on ``tiny``, small, writing into ``out``."""
    return harness.command(
        "lego.recipes.cli",
        "align",
        "ppo",
        "--config",
        str(EXAMPLES / "ppo-tiny.yaml"),
        f"model={tiny / 'model'}",
        f"reward_model={tiny / 'reward' / 'model'}",
        f"data.train={tiny / 'preferences.jsonl'}",
        f"out_dir={out}",
        *SMALL,
        *extra,
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resume_finishes(
    tiny: Path, tmp_path: Path, signum: int, code: int
) -> None:
    before = harness.snapshot(tiny)
    run = tmp_path / "run"
    command = ppo(tiny, run, "max_steps=100000", "checkpoint_every=3")
    assert_saved(interrupt_after(command, tmp_path, "train: 4 of", signum), code)
    step = checkpoint_step(run)
    assert step >= 4
    assert not (run / "model").exists()
    again = harness.run(ppo(tiny, run, f"max_steps={step + 3}", "resume=auto"), cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert f"at step {step}" in again.stderr
    assert f"done: step {step + 3}/{step + 3}" in again.stdout
    assert (run / "model" / "value_head.safetensors").is_file()
    assert (run / "model" / "config.json").is_file()
    harness.assert_unchanged(before, tiny)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("ppo.vf_cof=0.2", "did you mean 'vf_coef'"),
        ("ppo.kl_estimator=k2", "kl_estimator"),
        ("ppo.cliprange=0", "cliprange"),
        ("ppo.gamma=1.5", "gamma"),
        ("data.eval=x.jsonl", "does not evaluate held-out prompts"),
        ("reward_model=''", "reward_model is empty"),
        ("reward_model=missing", "reward_model does not exist"),
    ],
)
def test_a_bad_setting_is_one_message(
    tiny: Path, tmp_path: Path, override: str, phrase: str
) -> None:
    run = tmp_path / "run"
    assert_refused(ppo(tiny, run, override), tmp_path, tiny, run, phrase)


def test_a_language_model_is_no_reward_model(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = ppo(tiny, run, f"reward_model={tiny / 'model'}")
    result = assert_refused(command, tmp_path, tiny, run, "is not a reward model")
    assert "LlamaForCausalLM" in result.stderr


def test_a_reward_model_with_another_tokenizer_is_refused(tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-reward"
    shutil.copytree(tiny / "reward" / "model", other)
    (other / "lego-tokenizer.json").unlink()
    (other / "tokenizer.json").unlink(missing_ok=True)
    specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|padding|>": 259}
    RegexBPETokenizer("gpt4", special_tokens=specials, name="bytes").save(
        other / "lego-tokenizer.json"
    )
    for extra in other.glob("*.vocab"):
        extra.unlink()
    before = harness.snapshot(tiny)
    result = harness.run(ppo(tiny, tmp_path / "run", f"reward_model={other}"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="tokenizer differs")
    assert not (tmp_path / "run" / "checkpoints").exists()
    harness.assert_unchanged(before, tiny)
