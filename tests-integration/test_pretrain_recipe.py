"""``legollm pretrain`` with the real bricks: lego-arch, lego-data, lego-tokenize, lego-train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_train import TINY_RUN

from lego.protocols.layout import find_model_dir, find_tokenizer_file
from lego.recipes.cli import _main, main
from lego.train import read_metrics
from lego.train.cli import _main as train_main

SMALL = [
    "max_steps=4",
    "eval_every=2",
    "eval_batches=2",
    "checkpoint_every=2",
    "progress=none",
    *TINY_RUN,
    "sample.every=-1",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lego-cache")


def _pretrain(out: Path, cache: Path, *extra: str) -> None:
    assert (
        _main(
            [
                "pretrain",
                "--config",
                "tiny",
                f"out_dir={out}",
                f"data.cache_dir={cache}",
                *SMALL,
                *extra,
            ]
        )
        == 0
    )


def _final_weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(find_model_dir(run) / "model.safetensors"))


def test_tiny_recipe_writes_a_loadable_run(tmp_path: Path, cache_dir: Path) -> None:
    import lego.arch
    import lego.tokenize

    run = tmp_path / "run"
    _pretrain(run, cache_dir)
    model_dir = find_model_dir(run)
    assert model_dir == run / "checkpoints" / "step-00000004" / "model"
    tokenizer_file = find_tokenizer_file(model_dir)
    assert tokenizer_file is not None
    assert tokenizer_file.name == "lego-tokenizer.json"
    assert (model_dir / "tokenizer.json").is_file()
    tokenizer = lego.tokenize.load(tokenizer_file)
    model = lego.arch.from_hf(model_dir)
    ids = torch.tensor([tokenizer.encode("def main():")])
    assert model(ids).shape == (1, ids.shape[1], 320)
    records = read_metrics(run)
    baseline = [r for r in records if r["split"] == "baseline"]
    assert len(baseline) == 1
    assert baseline[0]["unigram_entropy"] > 3.0
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    # the prepared data and tokenizer were cached, keyed by the settings
    assert len(list((cache_dir / "train-data").iterdir())) == 1


def test_resume_of_a_lego_arch_model_is_exact(tmp_path: Path, cache_dir: Path) -> None:
    full = tmp_path / "full"
    _pretrain(full, cache_dir, "log_every=1")
    part = tmp_path / "part"
    middle = full / "checkpoints" / "step-00000002"
    _pretrain(part, cache_dir, "log_every=1", f"resume={middle}")
    a, b = _final_weights(full), _final_weights(part)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}

    assert losses(part) == {k: v for k, v in losses(full).items() if k > 2}


def test_resume_with_a_longer_schedule_follows_the_new_config(
    tmp_path: Path, cache_dir: Path
) -> None:
    run = tmp_path / "run"
    _pretrain(run, cache_dir, "max_steps=2", "log_every=1")
    _pretrain(run, cache_dir, "max_steps=4", "log_every=1", "resume=latest")
    lrs = {r["step"]: r["lr"] for r in read_metrics(run) if r["split"] == "train"}
    assert sorted(lrs) == [1, 2, 3, 4]
    assert lrs[3] > lrs[4] > 2.0e-4  # cosine over 4 steps, not stuck at the 2-step minimum


def test_resume_with_another_shape_lists_the_differences(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _pretrain(run, cache_dir, "max_steps=2")
    with pytest.raises(SystemExit) as info:
        main(
            [
                "pretrain",
                "--config",
                "tiny",
                f"out_dir={run}",
                f"data.cache_dir={cache_dir}",
                *SMALL,
                "model.overrides.d_model=48",
                "resume=latest",
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "CompatibilityError" not in err  # one message, no traceback
    assert "config d_model: checkpoint 32, model 48" in err


def test_plot_draws_the_curves(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    _pretrain(run, cache_dir)
    out = tmp_path / "curves.png"
    assert train_main(["plot", str(run), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainer_state_records_the_tokenizer_hash(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    _pretrain(run, cache_dir, "max_steps=2")
    state = json.loads((run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert len(state["tokenizer_hash"]) == 64
    assert state["model"]["config"]["d_model"] == 32


def test_recipe_samples_with_lego_generate() -> None:
    import lego.arch
    from lego.generate import generate
    from lego.recipes.pretrain import _sampler
    from lego.train import SampleCallback

    torch.manual_seed(0)
    model = lego.arch.build("gpt2-tiny")
    texts: list[str] = []
    callback = SampleCallback(
        model=model,
        prompt_ids=[1, 2, 3],
        decode=lambda ids: " ".join(map(str, ids)),
        max_new_tokens=6,
        emit=texts.append,
        sampler=_sampler,
    )
    text = callback.sample(0)
    assert model.training  # restored after sampling
    model.eval()
    expected = generate(
        model, torch.tensor([[1, 2, 3]]), max_new_tokens=6, top_k=40, temperature=0.8, seed=0
    )
    assert text == " ".join(map(str, expected[0, 3:].tolist()))
    assert texts == [f"sample @ step 0: 1 2 3{text}"]


def test_activation_checkpointing_gives_the_same_weights(tmp_path: Path, cache_dir: Path) -> None:
    plain = tmp_path / "plain"
    _pretrain(plain, cache_dir, "max_steps=2")
    ckpt = tmp_path / "ckpt"
    _pretrain(ckpt, cache_dir, "max_steps=2", "activation_checkpointing=true")
    a, b = _final_weights(plain), _final_weights(ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_larger_than_the_data_is_bad_input(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            [
                "pretrain",
                "--config",
                "tiny",
                f"out_dir={tmp_path / 'r'}",
                f"data.cache_dir={cache_dir}",
                *SMALL,
                "data.batch_size=10000000",
            ]
        )
    assert info.value.code == 2
    assert "batch" in capsys.readouterr().err


def test_torchrun_recipe_shards_the_data_by_rank(tmp_path: Path, cache_dir: Path) -> None:
    import os
    import subprocess
    import sys

    _pretrain(tmp_path / "warm", cache_dir, "max_steps=1")  # the cache exists before torchrun
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29600 + os.getpid() % 1000),
        "-m",
        "lego.recipes.cli",
        "pretrain",
        "--config",
        "tiny",
        f"out_dir={run}",
        f"data.cache_dir={cache_dir}",
        *SMALL,
        "max_steps=2",
        "strategy=ddp",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert state["strategy"] == "ddp"
    # 2 ranks x batch 4 x 32 tokens x 2 steps: every rank read its own shard
    assert state["tokens_seen"] == 2 * 4 * 32 * 2
