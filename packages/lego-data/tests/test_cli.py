from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from lego.data.cli import run
from lego.data.meta import open_split, read_meta
from lego.protocols import run_cli
from lego.tokenize import RegexBPETokenizer


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    err = io.StringIO()
    code = run_cli(run, argv, prog="lego-data", stderr=err)
    out = capsys.readouterr()
    return code, out.out, err.getvalue() + out.err


@pytest.fixture
def byte_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lego tokenizer file whose ids are the UTF-8 bytes, ``<|endoftext|>`` = 256."""
    path = tmp_path_factory.mktemp("tokenizer") / "bytes.json"
    RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256}).save(path)
    return str(path)


def test_prepare_with_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], byte_spec: str
) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"{i}.txt").write_text(f"document number {i}\n")
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        [
            "prepare",
            str(corpus),
            "--tokenizer",
            byte_spec,
            "-o",
            str(out),
            "--workers",
            "2",
            "--quiet",
            "val_fraction=0.2",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "train 152 tokens (8 documents), val 38 tokens (2 documents)" in stdout
    meta = read_meta(out)
    assert meta.split.method == "documents"
    assert meta.split.val_fraction == 0.2
    assert len(open_split(out, "train")) == 8 * 19  # 18 bytes + EOT per document
    assert meta.tokenizer.kind == "lego"
    assert meta.tokenizer.name == "bytes.json"


def test_prepare_with_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], byte_spec: str
) -> None:
    (tmp_path / "play.txt").write_text("All the world's a stage. " * 40)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"source: {tmp_path / 'play.txt'}\ntokenizer: {byte_spec}\nsplit: characters\n"
        f"val_fraction: 0.5\nout_dir: {tmp_path / 'out'}\nworkers: 1\n"
    )
    code, stdout, stderr = cli(
        ["prepare", "--config", str(config), "--quiet", "val_fraction=1e-1", "--workers", "2"],
        capsys,
    )
    assert code == 0, stderr
    assert "split by characters" in stdout
    meta = read_meta(tmp_path / "out")
    assert meta.split.val_fraction == 0.1  # the override, as a float
    assert meta.splits["val"].tokens == 100 + 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("val_fraction=", "the override val_fraction= has no value"),
        ("val_fractoin=0.1", "did you mean 'val_fraction'?"),
        ("val_fraction=abc", "is not a valid float"),
        ("workers=0", "workers must be at least 1"),
    ],
)
def test_bad_overrides_exit_2(
    override: str, message: str, capsys: pytest.CaptureFixture[str], byte_spec: str
) -> None:
    code, _stdout, stderr = cli(
        ["prepare", "python-stdlib", "--tokenizer", byte_spec, "-o", "x", override], capsys
    )
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert stderr.count("lego-data: error:") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "python-stdlib", "--tokenizer", "gtp2", "-o", "x"], "did you mean 'gpt2'"),
        (["prepare", "python-stdlib", "--tokenizer", "tok.json", "-o", "x"], "not found"),
        (["prepare", "python-stdlib", "--tokenizer", "gpt2", "-o", "x", "sedd=1"], "'seed'"),
        (["prepare", "python-stdlib", "-o", "x"], "missing tokenizer"),
        (["prepare", "a", "b", "--tokenizer", "gpt2", "-o", "x"], "give one corpus"),
        (["prepare", "--config", "missing.yaml"], "config file not found"),
        (["prepare", "no/such/dir", "--tokenizer", "gpt2", "-o", "x"], "no such corpus"),
        (["summary", "tiny_shakespear"], "did you mean 'tiny_shakespeare'"),
        (["download", "python-stdlib", "x"], "ships with Python"),
        (["download", "tinystorys", "x"], "did you mean 'tinystories'"),
        (["download", "ftp://x.org/a", "x"], "give an http(s) URL"),
    ],
)
def test_bad_input_exits_2_with_one_message(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _stdout, stderr = cli(argv, capsys)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert stderr.count("lego-data: error:") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["nonsense"], capsys)[0] == 2
    assert cli(["prepare", "--split", "random"], capsys)[0] == 2
    assert cli(["download"], capsys)[0] == 2


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(["--help"], capsys)
    assert code == 0
    assert "prepare" in stdout
    assert "example:" in stdout
    code, stdout, _ = cli(["prepare", "--help"], capsys)
    assert code == 0
    assert "lego-data prepare --config" in stdout


def test_download_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = cli(["download", "--list"], capsys)
    assert code == 0
    assert [line.split()[0] for line in stdout.splitlines()] == [
        "python-stdlib",
        "tiny_shakespeare",
        "tinystories",
        "tinystories_valid",
    ]


def test_download_url_into_folder(
    file_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_server.files["/data/corpus.txt"] = b"some text"
    code, stdout, stderr = cli(
        ["download", file_server.url("/data/corpus.txt"), str(tmp_path), "--quiet"], capsys
    )
    assert code == 0, stderr
    assert stdout.strip() == str(tmp_path / "corpus.txt")
    assert (tmp_path / "corpus.txt").read_bytes() == b"some text"


def test_download_checksum_mismatch_exits_2(
    file_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file_server.files["/c.txt"] = b"some text"
    code, _, stderr = cli(
        ["download", file_server.url("/c.txt"), str(tmp_path / "c.txt"), "--sha256", "0" * 64],
        capsys,
    )
    assert code == 2
    assert "checksum mismatch" in stderr
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable_exits_2(
    free_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port}/c.txt"
    code, _, stderr = cli(["download", url, str(tmp_path / "c.txt")], capsys)
    assert code == 2
    assert "could not reach" in stderr
    assert "Traceback" not in stderr


def test_summary_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    code, stdout, _ = cli(["summary", str(tmp_path / "a.txt")], capsys)
    assert code == 0
    assert "distinct characters" in stdout
    code, stdout, _ = cli(["summary", str(tmp_path / "a.txt"), "--json"], capsys)
    assert code == 0
    data = json.loads(stdout)
    assert (data["lines"], data["documents"], data["bytes"]) == (2, 1, 12)


def test_summary_with_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], byte_spec: str
) -> None:
    (tmp_path / "a.txt").write_text("aab")
    code, stdout, _ = cli(
        ["summary", str(tmp_path / "a.txt"), "--tokenizer", byte_spec, "--json", "--top-k", "1"],
        capsys,
    )
    assert code == 0
    tokens = json.loads(stdout)["tokens"]
    assert tokens["tokens"] == 3
    assert tokens["most_common"] == [{"id": 97, "text": "a", "count": 2}]


def test_summary_bad_top_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("aab")
    code, _, stderr = cli(["summary", str(tmp_path / "a.txt"), "--top-k", "-1"], capsys)
    assert code == 2
    assert "top_k must be at least 0" in stderr


def test_main_console_script(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lego.data.cli as cli_module

    monkeypatch.setattr("sys.argv", ["lego-data", "summary", "--help"])
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    assert info.value.code == 0
    assert "usage: lego-data summary" in capsys.readouterr().out


def test_only_the_lego_data_command_is_installed() -> None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = pyproject.read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert [line.split("=")[0].strip() for line in scripts.strip().splitlines()] == ["lego-data"]


_NO_TORCH_SCRIPT = """
import sys

import lego.data.cli as cli

assert "torch" not in sys.modules, "import lego.data.cli"
corpus, out, tokenizer = sys.argv[1], sys.argv[2], sys.argv[3]
for argv in (
    ["download", "--help"],
    ["download", "--list"],
    ["summary", corpus, "--json"],
    ["prepare", corpus, "--tokenizer", tokenizer, "-o", out, "--workers", "1", "--quiet"],
):
    try:
        code = cli.run(argv)
    except SystemExit as exit:
        code = exit.code
    assert code == 0, (argv, code)
    assert "torch" not in sys.modules, argv
print("no torch")
"""


def test_commands_do_not_import_torch(tmp_path: Path, byte_spec: str) -> None:
    import subprocess
    import sys

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.txt").write_text(f"document number {i}\n")
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, str(corpus), str(tmp_path / "out"), byte_spec],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("no torch")
    assert (tmp_path / "out" / "meta.json").is_file()


def test_package_names_are_lazy() -> None:
    import subprocess
    import sys

    script = (
        "import sys, lego.data as d\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'TokenLoader' in dir(d) and set(d.__all__) <= set(dir(d))\n"
        "assert d.get_corpus.__module__ == 'lego.data.corpora.registry'\n"
        "assert 'torch' not in sys.modules\n"
        "assert d.TokenLoader.__name__ == 'TokenLoader'\n"
        "assert 'torch' in sys.modules\n"
        "assert all(getattr(d, name) is not None for name in d.__all__)\n"
        "try:\n    d.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "has no attribute 'no_such_name'" in done.stdout
