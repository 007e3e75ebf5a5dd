"""``legollm align ppo`` end to end, against a reward model that ``align reward`` trained.

``examples/align/make_tiny.py`` writes the tiny model and the preference records into a
temporary working directory; ``reward-tiny.yaml`` (fewer steps) trains the reward model,
then ``ppo-tiny.yaml`` runs PPO on the records' prompts, as the docs say. With fixed seeds
the reward model's mean score of the policy's completions rises from the first rollouts to
the last, and the run writes the policy with its value head and the curves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torchrun_cli import torchrun_legollm

from lego.align import VALUE_HEAD_FILE, read_value_head
from lego.recipes.align import RewardRecipeConfig, run_reward
from lego.recipes.configs import read_recipe_config
from lego.recipes.ppo import PPORecipeConfig, run_ppo, score_rise

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "align"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make_tiny.py writes, and the reward model reward-tiny.yaml trains (small)."""
    root = tmp_path_factory.mktemp("ppo")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_tiny.py"), "runs/align-tiny"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = read_recipe_config(
        RewardRecipeConfig,
        str(EXAMPLES / "reward-tiny.yaml"),
        [
            f"out_dir={root / 'runs' / 'reward-tiny'}",
            *_paths(root),
            f"data.eval={root / 'runs' / 'align-tiny' / 'preferences-eval.jsonl'}",
            "max_steps=20",
            "plots=false",
        ],
    )
    trained = run_reward(config)
    assert trained.finished
    return root


def _paths(root: Path) -> list[str]:
    tiny = root / "runs" / "align-tiny"
    return [
        f"model={tiny / 'model'}",
        f"data.train={tiny / 'preferences.jsonl'}",
        "progress=none",
    ]


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ppo_example_raises_the_reward_models_score(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)  # the example's relative paths resolve here
    config = read_recipe_config(PPORecipeConfig, str(EXAMPLES / "ppo-tiny.yaml"), ["progress=none"])
    assert config.reward_model == "runs/reward-tiny/model"
    result = run_ppo(config)
    assert result.finished
    run = workdir / "runs" / "ppo-tiny"
    train = [r for r in _records(run) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(2, config.max_steps + 1, 2))
    rise = score_rise(run, window=4)
    assert rise is not None
    first, last = rise
    assert last > first + 0.1, rise  # the reward model's score of the completions rises
    assert train[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # rollout 1: the start
    assert train[-1]["objective/kl"] > 0.1  # the policy moved away from its reference
    model = run / "model"
    assert (model / "model.safetensors").is_file()
    head = read_value_head(model, 64)
    assert head.shape == (1, 64)
    assert torch.isfinite(head).all()
    assert (model / VALUE_HEAD_FILE).is_file()
    saved = json.loads((model / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"]  # the policy, not the reward model
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_ppo_recipe_under_torchrun_writes_one_run_and_resumes(workdir: Path) -> None:
    """2 ranks: each rolls out half of every rollout's prompts; rank 0 writes the one run."""
    small = [
        "progress=plain",
        "plots=false",
        "log_every=1",
        "checkpoint_every=1",
        "strategy=ddp",
        "out_dir=runs/ppo-ddp",
    ]
    config = str(EXAMPLES / "ppo-tiny.yaml")
    torchrun_legollm(workdir, "align", "ppo", "--config", config, *small, "max_steps=3")
    run = workdir / "runs" / "ppo-ddp"
    last = run / "checkpoints" / "step-00000003"
    assert json.loads((last / "trainer_state.json").read_text())["world_size"] == 2
    data = torch.load(last / "data.pt", weights_only=True)
    assert sorted(data["rows"]) == ["rank0", "rank1"]  # inside the first rollout: both ranks'
    assert data["rows"]["rank0"]["input_ids"].shape[0] == 8  # half of the 16 prompts
    assert (run / "model" / VALUE_HEAD_FILE).is_file()
    assert sorted(p.name for p in (workdir / "runs").iterdir() if "ddp" in p.name) == ["ppo-ddp"]
    assert [r["step"] for r in _records(run) if r["split"] == "train"] == [1, 2, 3]

    # resumed inside the rollout, to 6 steps (the rest of rollout 1, then rollout 2)
    torchrun_legollm(
        workdir, "align", "ppo", "--config", config, *small, "max_steps=6", "resume=auto"
    )
    train = [r for r in _records(run) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["objective/scores"] == train[0]["objective/scores"] for r in train[:4])
    assert train[4]["objective/scores"] != train[0]["objective/scores"]  # a new rollout
