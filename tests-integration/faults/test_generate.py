"""Faults of ``legollm generate`` and ``legollm chat`` (issue 17), through real processes.

Every test runs the command as a user would, asserts its exit code, one message on stderr
without "Traceback", and that every file that existed before is byte-identical afterwards.
One tiny run directory is made once per module, laid out as lego-train writes it
(``checkpoints/step-00000002/{model/, trainer_state.json}`` with the size and SHA-256 of
every file, ``checkpoints/latest``); each test works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import harness
import pytest
import torch
from safetensors.torch import load_file, save_file

from lego.arch import build, to_hf
from lego.protocols import temporary_name
from lego.tokenize import RegexBPETokenizer
from lego.train.checkpoint import TRAINER_STATE_FILE, TrainerStateFile, file_manifest

STEP = "step-00000002"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = "hello there, how are you? I am a small model and I like to talk. " * 20
WEIGHTS = "model.safetensors"
TENSOR = "transformer.h.0.attn.c_proj.weight"


def _tokenizer(vocab_size: int, *, extra: int = 0) -> RegexBPETokenizer:
    """A tokenizer of ``TEXT`` with ``extra`` more special tokens than the model's."""
    tokenizer = RegexBPETokenizer("gpt4")
    specials = [*SPECIALS, *(f"<|extra_{i}|>" for i in range(extra))]
    with warnings.catch_warnings():  # a short text may reach fewer ids: fine here
        warnings.simplefilter("ignore")
        tokenizer.train(TEXT, vocab_size=vocab_size + extra, special_tokens=specials)
    return tokenizer


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as lego-train leaves it, plus two other tokenizers beside it."""
    root = tmp_path_factory.mktemp("made")
    tokenizer = _tokenizer(300)
    checkpoint = root / "run" / "checkpoints" / STEP
    torch.manual_seed(0)
    model = build("gpt2-tiny", vocab_size=tokenizer.vocab_size, context_length=64)
    to_hf(model, checkpoint / "model")
    tokenizer.save(checkpoint / "model" / "lego-tokenizer.json")
    state = TrainerStateFile(step=2, tokens_seen=256, files=file_manifest(checkpoint))
    (checkpoint / TRAINER_STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
    (checkpoint.parent / "latest").write_text(STEP + "\n")
    smaller, larger = _tokenizer(280), _tokenizer(300, extra=8)
    assert smaller.vocab_size < tokenizer.vocab_size < larger.vocab_size
    smaller.save(root / "smaller.json")
    larger.save(root / "larger.json")
    return root


@pytest.fixture
def work(made: Path, tmp_path: Path) -> Path:
    """A copy of the made folder for a test to break (``run/``, ``smaller.json``...)."""
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _model(work: Path) -> Path:
    return work / "run" / "checkpoints" / STEP / "model"


def _plain(work: Path) -> Path:
    """A plain model directory (no checkpoint around it) copied from the run's."""
    plain = work / "plain"
    shutil.copytree(_model(work), plain)
    return plain


def generate(model: Path, *extra: str, prompt: str = "hello") -> list[str]:
    """``legollm generate`` of a few tokens."""
    return harness.command(
        "lego.recipes.cli",
        "generate",
        "--model",
        str(model),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        *extra,
    )


def _fails(work: Path, argv: list[str], phrase: str, **run: object) -> harness.Result:
    """Run ``argv`` in ``work``: exit 2, one message with ``phrase``, no file changed."""
    before = harness.snapshot(work)
    result = harness.run(argv, cwd=work, **run)  # type: ignore[arg-type]
    harness.assert_one_message(result, prog="legollm", phrase=phrase)
    harness.assert_unchanged(before, work)
    return result


def test_the_intact_run_generates(work: Path) -> None:
    """The baseline every fault below breaks: run, checkpoint and model directory all load."""
    before = harness.snapshot(work)
    for target in (work / "run", _model(work).parent, _model(work), _plain(work)):
        result = harness.run(generate(target), cwd=work)
        assert result.code == 0, result.stderr
        assert "Traceback" not in result.stderr
    harness.assert_unchanged(before, work)


# -- item 8: a checkpoint whose files do not match its record is refused -------------------


def _flip_a_byte(model: Path) -> None:
    data = bytearray((model / WEIGHTS).read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: the header still parses
    (model / WEIGHTS).write_bytes(bytes(data))


def _truncate(model: Path) -> None:
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data[: len(data) // 2])


def _swap_the_config(model: Path) -> None:
    text = (model / "config.json").read_text()
    assert '"n_layer": 2' in text
    # the same size and still a valid model: only the recorded SHA-256 can tell
    (model / "config.json").write_text(text.replace('"n_layer": 2', '"n_layer": 1'))


@pytest.mark.parametrize(
    ("damage", "phrase", "level"),
    [
        (_flip_a_byte, "SHA-256 mismatch", "run"),
        (_truncate, "truncated or extended", "checkpoint"),
        (_swap_the_config, "SHA-256 mismatch", "model"),
    ],
)
def test_a_checkpoint_that_does_not_match_its_record_is_refused(
    work: Path, damage: object, phrase: str, level: str
) -> None:
    assert callable(damage)
    damage(_model(work))
    target = {"run": work / "run", "checkpoint": _model(work).parent, "model": _model(work)}
    _fails(work, generate(target[level]), phrase)


def test_a_checkpoint_without_its_record_is_refused_but_its_model_dir_loads(
    work: Path,
) -> None:
    (_model(work).parent / TRAINER_STATE_FILE).unlink()
    result = _fails(work, generate(work / "run"), "no trainer_state.json")
    assert f"--model {_model(work)}" in result.stderr  # the way to load it unverified
    assert harness.run(generate(_model(work)), cwd=work).code == 0


# -- item 9: a tokenizer that does not fit the model ------------------------------------------


@pytest.mark.parametrize("name", ["smaller.json", "larger.json"])
def test_a_tokenizer_of_another_size_is_refused_up_front(work: Path, name: str) -> None:
    result = _fails(
        work, generate(work / "run", "--tokenizer", str(work / name)), "the model's vocabulary"
    )
    assert "--tokenizer" in result.stderr


# -- item 11: checkpoints/latest holding garbage ------------------------------------------------


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x81garbage\n", b"../../etc\n"])
def test_a_broken_latest_file_is_one_clear_error(work: Path, content: bytes) -> None:
    (work / "run" / "checkpoints" / "latest").write_bytes(content)
    _fails(work, generate(work / "run"), "latest-checkpoint file")


# -- item 12: damaged weights and ids outside the vocabulary ---------------------------------


def _rewrite(model: Path, tensor: torch.Tensor) -> None:
    tensors = load_file(model / WEIGHTS)
    tensors[TENSOR] = tensor
    save_file(tensors, str(model / WEIGHTS), metadata={"format": "pt"})


def test_nan_weights_in_a_model_directory_are_named(work: Path) -> None:
    plain = _plain(work)
    tensor = load_file(plain / WEIGHTS)[TENSOR].clone()
    tensor[1, 2] = float("nan")
    _rewrite(plain, tensor)
    result = _fails(work, generate(plain), "non-finite values")
    assert TENSOR in result.stderr


def test_integer_weights_in_a_model_directory_are_named(work: Path) -> None:
    plain = _plain(work)
    _rewrite(plain, load_file(plain / WEIGHTS)[TENSOR].to(torch.int64))
    result = _fails(work, generate(plain), "not as floating point")
    assert TENSOR in result.stderr


@pytest.mark.parametrize("eos", [100_000, -1, [3, 5000]])
def test_an_eos_token_id_outside_the_vocabulary_is_refused(work: Path, eos: object) -> None:
    plain = _plain(work)
    config = json.loads((plain / "config.json").read_text())
    config["eos_token_id"] = eos
    (plain / "config.json").write_text(json.dumps(config))
    _fails(work, generate(plain), "eos_token_id")


# -- item 16: messages that point the right way ----------------------------------------------


def test_a_file_given_as_model_is_named_a_file(work: Path) -> None:
    result = _fails(work, generate(_model(work) / WEIGHTS), "is a file")
    assert "not found" not in result.stderr


def test_a_typo_in_a_lego_config_gets_a_did_you_mean(work: Path) -> None:
    from lego.arch import read_hf_config

    plain = _plain(work)
    data = read_hf_config(plain).to_dict()
    data["n_layer"] = data.pop("n_layers")
    (plain / "config.json").write_text(json.dumps(data))
    result = _fails(work, generate(plain), "unknown DecoderConfig key 'n_layer'")
    assert "did you mean 'n_layers'" in result.stderr
    assert "unsupported" not in result.stderr


def test_a_chat_that_outgrows_the_context_goes_on_without_its_oldest_turns(work: Path) -> None:
    lines = [
        "hello there, how are you?",
        "I am a small model and I like to talk.",
        "x" * 200,  # too long on its own: a note, and the session goes on
        "how are you today, my small model?",
        "/exit",
    ]
    argv = harness.command(
        "lego.recipes.cli", "chat", "--model", str(work / "run"), "--max-new-tokens", "8"
    )
    before = harness.snapshot(work)
    result = harness.run([*argv, "--device", "cpu"], cwd=work, stdin="\n".join(lines) + "\n")
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" not in result.stderr
    assert "legollm: note: the conversation outgrew the model's context" in result.stderr
    assert "dropped the oldest 2 messages" in result.stderr
    assert "the message does not fit the model's context" in result.stderr
    assert result.stdout.count("> ") == len(lines)  # a prompt for every line: never ended
    harness.assert_unchanged(before, work)


# -- the same class elsewhere: bad --model paths, bad flags, damaged files ---------------------


def test_a_missing_model_path_is_not_found(work: Path) -> None:
    _fails(work, generate(work / "nowhere"), "the model path does not exist")


def test_a_folder_without_a_model_says_what_it_lacks(work: Path) -> None:
    (work / "empty").mkdir()
    _fails(work, generate(work / "empty"), "holds no config.json")


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--max-new-tokens", "1000"], "context"),
        (["--temperature", "nan"], "temperature"),
        (["--top-k", "-3"], "top_k"),
        (["--seed", str(2**64)], "seed"),
        (["--num-beams", "0"], "num_beams"),
        (["--dtype", "float7"], "float7"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_bad_decoding_flags_are_one_clear_error(work: Path, flags: list[str], phrase: str) -> None:
    _fails(work, generate(work / "run", *flags), phrase)


def test_bad_flags_are_reported_before_the_model_is_read(work: Path) -> None:
    _truncate(_plain(work))  # reading the model would fail: the flag is named first
    _fails(work, generate(work / "plain", "--top-p", "1.5"), "top_p")


def test_a_damaged_safetensors_header_is_one_clear_error(work: Path) -> None:
    plain = _plain(work)
    data = (plain / WEIGHTS).read_bytes()
    (plain / WEIGHTS).write_bytes(data[:8] + b"{not json" + data[17:])
    _fails(work, generate(plain), WEIGHTS)


def test_an_index_naming_a_missing_shard_is_one_clear_error(work: Path) -> None:
    sharded = work / "sharded"
    to_hf(build("gpt2-tiny", vocab_size=300, context_length=64), sharded, max_shard_size="40KB")
    shutil.copy(_model(work) / "lego-tokenizer.json", sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    _fails(work, generate(sharded), shards[-1].name)


def test_an_index_naming_the_wrong_shard_is_one_clear_error(work: Path) -> None:
    """Was a SafetensorError traceback: "File does not contain tensor ..."."""
    sharded = work / "sharded"
    to_hf(build("gpt2-tiny", vocab_size=300, context_length=64), sharded, max_shard_size="40KB")
    shutil.copy(_model(work) / "lego-tokenizer.json", sharded)
    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    weight_map = index["weight_map"]
    name = next(iter(weight_map))
    weight_map[name] = next(f for f in sorted(set(weight_map.values())) if f != weight_map[name])
    index_file.write_text(json.dumps(index))
    _fails(work, generate(sharded), "does not hold them")


# -- item 6 and 17: the native kernel cache -----------------------------------------------------


def _native_build_possible() -> bool:
    from lego.protocols import cpu_flags  # the same check the build makes

    needed = {"avx512f", "avx512bw", "avx512vl", "fma"}
    return sys.platform == "linux" and needed <= cpu_flags() and shutil.which("cc") is not None


needs_native = pytest.mark.skipif(
    not _native_build_possible(), reason="the native kernels need x86-64 AVX-512 and a compiler"
)


@needs_native
def test_a_damaged_cached_kernel_is_rebuilt_not_loaded(work: Path) -> None:
    cache = work / "kernels"
    env = {"LEGO_KERNELS_HOME": str(cache)}
    argv = generate(work / "run", "--native-kernels")
    first = harness.run(argv, cwd=work, env=env)
    assert first.code == 0, first.stderr
    assert "compiling the native CPU decode kernels" in first.stderr
    (library,) = cache.glob("skinny-*.so")
    library.write_bytes(library.read_bytes()[:4096])  # truncated: ctypes would die of SIGBUS
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    parts = temporary_name(library).name.split("-")
    stale = cache / "-".join([*parts[:-2], str(dead.pid), parts[-1]])
    stale.write_bytes(b"half a library of a killed build")
    before = harness.snapshot(work, exclude=[cache])
    harness.COUNTS["faults"] += 1
    again = harness.run(argv, cwd=work, env=env)
    assert again.code == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert "rebuilding the native CPU decode kernels" in again.stderr
    assert "does not match its recorded SHA-256" in again.stderr
    assert not stale.exists()  # the leftover of the killed build is gone
    assert first.stdout == again.stdout  # the same greedy text
    harness.assert_unchanged(before, work)
    third = harness.run(argv, cwd=work, env=env)  # verified: used as it is, nothing said
    assert third.code == 0
    assert "native CPU decode kernels" not in third.stderr


@needs_native
@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_a_kernel_cache_others_can_write_is_never_loaded_from(work: Path, mode: int) -> None:
    cache = work / "kernels"
    cache.mkdir()
    cache.chmod(mode)
    planted = cache / "skinny-0000000000000000.so"
    planted.write_bytes(b"\x7fELF planted")
    before = harness.snapshot(work)
    harness.COUNTS["faults"] += 1
    result = harness.run(
        generate(work / "run", "--native-kernels"),
        cwd=work,
        env={"LEGO_KERNELS_HOME": str(cache)},
    )
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "not loading the native CPU decode kernels" in result.stderr
    assert "writable by group or others" in result.stderr
    assert sorted(p.name for p in cache.iterdir()) == [planted.name]  # nothing built into it
    assert stat.S_IMODE(os.stat(cache).st_mode) == mode
    harness.assert_unchanged(before, work)


@needs_native
def test_kernels_asked_for_but_unbuildable_are_reported_and_decoding_goes_on(
    work: Path,
) -> None:
    cache = work / "kernels"
    before = harness.snapshot(work)
    harness.COUNTS["faults"] += 1
    result = harness.run(
        generate(work / "run", "--native-kernels"),
        cwd=work,
        env={"LEGO_KERNELS_HOME": str(cache), "CC": "false"},  # a compiler that always fails
    )
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "could not build the native CPU decode kernels" in result.stderr
    assert "decoding uses PyTorch's kernels" in result.stderr
    assert [p.name for p in cache.iterdir()] == []  # no half-built library, no temporaries
    harness.assert_unchanged(before, work)
