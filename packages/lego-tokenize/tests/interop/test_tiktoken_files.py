from __future__ import annotations

import base64
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from lego.protocols import CompatibilityError, ConfigError, DataError, FormatError
from lego.tokenize.interop import tiktoken_files
from lego.tokenize.interop.tiktoken_files import (
    read_tiktoken,
    read_tiktoken_file,
    tiktoken_names,
    write_tiktoken_file,
)
from lego.tokenize.patterns import PATTERNS

Trained = tuple[dict[bytes, int], list[tuple[bytes, bytes]]]


@pytest.fixture
def ranks(trained: Trained) -> dict[bytes, int]:
    return trained[0]


@pytest.fixture
def tk_file(tmp_path: Path, ranks: dict[bytes, int]) -> Path:
    path = tmp_path / "small.tiktoken"
    write_tiktoken_file(path, ranks)
    return path


def test_round_trip_and_tiktoken_reads_it(tk_file: Path, ranks: dict[bytes, int]) -> None:
    assert read_tiktoken_file(tk_file) == ranks
    assert tiktoken.load.load_tiktoken_bpe(str(tk_file)) == ranks
    first = tk_file.read_bytes().split(b"\n")[0]
    assert first == base64.b64encode(b"\x00") + b" 0"


def test_read_tiktoken_takes_paths(tk_file: Path, ranks: dict[bytes, int]) -> None:
    assert read_tiktoken(tk_file) == (ranks, None, {})
    assert read_tiktoken(str(tk_file)) == (ranks, None, {})


def test_read_tiktoken_reads_tiktokens_own_dump(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    # tiktoken.load.dump_tiktoken_bpe needs blobfile; write the same lines by hand.
    lines = [base64.b64encode(t) + b" " + str(r).encode() for t, r in ranks.items()]
    path = tmp_path / "theirs.tiktoken"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    assert read_tiktoken_file(path) == ranks


def _corrupt(path: Path, line: int, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = new
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    ("line", "content", "message"),
    [
        (3, b"AAA= 2 extra", "expected '<base64 token> <rank>'"),
        (3, b"AAA=", "expected '<base64 token> <rank>'"),
        (3, b"A!A= 2", "not valid base64"),
        (3, b"AAA 2", "not valid base64"),
        (3, b"AAI= two", "not a non-negative integer"),
        (3, b"AAI= -2", "not a non-negative integer"),
        (3, base64.b64encode(b"\x00") + b" 2", "appears again \\(first on line 1\\)"),
        (3, base64.b64encode(b"\x02") + b" 0", "rank 0 appears again"),
    ],
)
def test_bad_lines_name_the_line(tk_file: Path, line: int, content: bytes, message: str) -> None:
    _corrupt(tk_file, line, content)
    with pytest.raises(FormatError, match=message) as info:
        read_tiktoken_file(tk_file)
    assert (info.value.path, info.value.line) == (str(tk_file), line)


def test_gap_in_ranks(tk_file: Path, ranks: dict[bytes, int]) -> None:
    lines = tk_file.read_bytes().split(b"\n")
    del lines[300]
    tk_file.write_bytes(b"\n".join(lines))
    with pytest.raises(FormatError, match="rank 300 is missing"):
        read_tiktoken_file(tk_file)


def test_missing_single_bytes(tmp_path: Path) -> None:
    path = tmp_path / "few.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(10)))
    with pytest.raises(FormatError, match="lacks single-byte tokens for 246"):
        read_tiktoken_file(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tiktoken"
    path.write_bytes(b"\n\n")
    with pytest.raises(FormatError, match="holds no tokens"):
        read_tiktoken_file(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_tiktoken(str(tmp_path / "nope.tiktoken"))
    with pytest.raises(ConfigError, match="not found"):
        read_tiktoken("some/dir/cl100k_base")


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ConfigError, match="unknown tiktoken encoding 'cl100k'") as info:
        read_tiktoken("cl100k")
    assert info.value.hint is not None
    assert "cl100k_base" in info.value.hint
    assert "cl100k_base" in tiktoken_names()


def test_download_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> tiktoken.Encoding:
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/somewhere/cache")
    with pytest.raises(DataError, match="could not load the encoding 'r50k_base'") as info:
        read_tiktoken("r50k_base")
    assert info.value.hint is not None
    assert "TIKTOKEN_CACHE_DIR" in info.value.hint
    assert "/somewhere/cache" in info.value.hint


def test_a_name_gives_ranks_pattern_and_specials(
    monkeypatch: pytest.MonkeyPatch, ranks: dict[bytes, int]
) -> None:
    encoding = tiktoken.Encoding(
        "gpt2",
        pat_str=PATTERNS["gpt2"],
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)
    got = read_tiktoken("gpt2")
    assert got == (ranks, PATTERNS["gpt2"], {"<|endoftext|>": len(ranks)})
    assert got[0] is not encoding._mergeable_ranks  # a copy


def test_write_rejects_bad_ranks(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    gapped = dict(ranks)
    gapped[max(gapped, key=lambda t: gapped[t])] += 1
    with pytest.raises(CompatibilityError, match=r"not 0\.\."):
        write_tiktoken_file(tmp_path / "x.tiktoken", gapped)
    with pytest.raises(CompatibilityError, match="lacks single-byte"):
        write_tiktoken_file(tmp_path / "x.tiktoken", {b"a": 0})
    assert not (tmp_path / "x.tiktoken").exists()


def test_module_names_its_exports() -> None:
    assert set(tiktoken_files.__all__) >= {"read_tiktoken", "write_tiktoken_file"}
