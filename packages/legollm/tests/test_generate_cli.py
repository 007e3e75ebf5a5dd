"""legollm generate and chat end to end: a lego-arch model directory, a run directory, errors."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from lego.arch import build, to_hf
from lego.generate import generate
from lego.protocols.layout import CHECKPOINTS_DIR, LATEST_FILE, MODEL_DIR
from lego.recipes.cli import main
from lego.tokenize import RegexBPETokenizer
from lego.train.checkpoint import TRAINER_STATE_FILE, TrainerStateFile, file_manifest

SHARED = Path(os.environ.get("LEGO_SHARED_DATA", Path(__file__).parents[4] / "shared" / "data"))


def _tokenizer() -> RegexBPETokenizer:
    path = SHARED / "hf_gpt2" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"shared data missing: {path}")
    return RegexBPETokenizer.from_hf(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("run") / CHECKPOINTS_DIR / "step-00000010"
    folder = checkpoint / MODEL_DIR
    to_hf(build("gpt2-tiny", vocab_size=50257), folder)
    # As lego-train writes a checkpoint: trainer_state.json lists every file's size and hash.
    state = TrainerStateFile(step=10, tokens_seen=0, files=file_manifest(checkpoint))
    (checkpoint / TRAINER_STATE_FILE).write_text(json.dumps(state.to_dict()))
    return folder


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    code = exit_.value.code
    assert isinstance(code, int)
    return code


def test_generate_prints_the_greedy_continuation(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = _tokenizer()
    hf_json = SHARED / "hf_gpt2" / "tokenizer.json"
    code = _run(
        [
            "generate",
            "--model",
            str(model_dir),
            "--tokenizer",
            f"hf:{hf_json}",
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "12",
        ]
    )
    assert code == 0
    from lego.arch import from_hf

    model = from_hf(model_dir)
    ids = torch.tensor([tokenizer.encode("Hello")])
    out = generate(model, ids, max_new_tokens=12, eos_token_id=50256)
    new = [t for t in out[0, ids.shape[1] :].tolist() if t != 50256]
    assert capsys.readouterr().out == tokenizer.decode(new) + "\n"


def test_run_directory_follows_latest(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tokenizer()
    run_dir = model_dir.parents[2]
    (run_dir / CHECKPOINTS_DIR / LATEST_FILE).write_text("step-00000010\n")
    hf_json = SHARED / "hf_gpt2" / "tokenizer.json"
    args = ["--tokenizer", f"hf:{hf_json}", "--prompt", "Hi", "--max-new-tokens", "5"]
    assert _run(["generate", "--model", str(run_dir), *args]) == 0
    first = capsys.readouterr().out
    assert _run(["generate", "--model", str(model_dir), *args]) == 0
    assert capsys.readouterr().out == first


def test_model_dir_without_tokenizer_says_how_to_pass_one(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["generate", "--model", str(model_dir), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err
    assert "--tokenizer" in err


def test_bad_strategy_flag_exits_2(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf_json = SHARED / "hf_gpt2" / "tokenizer.json"
    _tokenizer()
    code = _run(
        [
            "generate",
            "--model",
            str(model_dir),
            "--tokenizer",
            f"hf:{hf_json}",
            "--prompt",
            "Hi",
            "--top-p",
            "1.5",
        ]
    )
    assert code == 2
    assert "top_p" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a ChatML tokenizer saved beside it as lego-tokenizer.json."""
    tokenizer = RegexBPETokenizer("gpt4")
    text = "hello there, how are you? I am a small model. " * 20
    with warnings.catch_warnings():  # the text reaches fewer than 300 ids: fine here
        warnings.simplefilter("ignore")
        tokenizer.train(text, vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"])
    folder = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    to_hf(build("gpt2-tiny", vocab_size=tokenizer.vocab_size), folder)
    tokenizer.save(folder / "lego-tokenizer.json")
    return folder


def test_chat_streams_replies_over_turns(
    chat_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from lego.arch import from_hf
    from lego.generate import GenerationConfig
    from lego.generate.chat import ChatSession
    from lego.tokenize import load

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\nhow are you?\n/exit\n"))
    args = ["chat", "--model", str(chat_dir), "--max-new-tokens", "6", "--system", "Be brief."]
    assert _run(args) == 0
    out = capsys.readouterr().out

    # the same conversation through the library gives the same two replies
    session = ChatSession(
        model=from_hf(chat_dir),
        tokenizer=load(chat_dir / "lego-tokenizer.json"),
        template="chatml",
        system_prompt="Be brief.",
        generation_config=GenerationConfig(max_new_tokens=6),
    )
    first = "".join(session.send("hello"))
    second = "".join(session.send("how are you?"))
    # a prompt per line read: "hello", the empty line (skipped), "how are you?", "/exit"
    assert out.split("> ")[1:] == [f"{first}\n", "", f"{second}\n", ""]


def test_chat_needs_the_template_special_tokens(
    model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    hf_json = SHARED / "hf_gpt2" / "tokenizer.json"
    _tokenizer()
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    args = ["chat", "--model", str(model_dir), "--tokenizer", f"hf:{hf_json}"]
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert "no special token '<|im_end|>'" in err
    assert "chatml template" in err
