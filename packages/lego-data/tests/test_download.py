from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from lego.data.download import download, is_url, sha256_file
from lego.protocols import ConfigError, DataError

BODY = bytes(range(256)) * 997  # 255,232 bytes: several read chunks at chunk_size=4096
SHA = hashlib.sha256(BODY).hexdigest()


def test_plain_download_verified(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/corpus.txt"] = BODY
    dest = tmp_path / "sub" / "corpus.txt"
    path = download(file_server.url("/corpus.txt"), dest, sha256=SHA, chunk_size=4096)
    assert path == dest
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "sub" / "corpus.txt.part").exists()
    assert file_server.requests == [("/corpus.txt", None)]


def test_existing_verified_file_is_not_downloaded_again(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/c.txt"] = BODY
    dest = tmp_path / "c.txt"
    dest.write_bytes(BODY)
    download(file_server.url("/c.txt"), dest, sha256=SHA.upper())
    assert file_server.requests == []


def test_existing_wrong_file_is_replaced(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/c.txt"] = BODY
    dest = tmp_path / "c.txt"
    dest.write_bytes(b"stale")
    download(file_server.url("/c.txt"), dest, sha256=SHA)
    assert dest.read_bytes() == BODY


def test_interrupted_transfer_resumes_with_range(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/big.bin"] = BODY
    file_server.mode = "cut-once"
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    with pytest.raises(DataError, match="run the same command again") as info:
        download(file_server.url("/big.bin"), dest, sha256=SHA, retries=0, chunk_size=4096)
    assert info.value.path == str(part)
    kept = part.stat().st_size
    assert 0 < kept < len(BODY)
    assert part.read_bytes() == BODY[:kept]
    assert not dest.exists()

    download(file_server.url("/big.bin"), dest, sha256=SHA, chunk_size=4096)
    assert dest.read_bytes() == BODY
    assert not part.exists()
    assert file_server.requests[-1] == ("/big.bin", f"bytes={kept}-")


def test_retries_resume_within_one_call(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/big.bin"] = BODY
    file_server.mode = "cut-once"
    dest = tmp_path / "big.bin"
    download(file_server.url("/big.bin"), dest, sha256=SHA, retries=2, chunk_size=4096)
    assert dest.read_bytes() == BODY
    assert [r[1] is None for r in file_server.requests] == [True, False]


def test_server_ignoring_range_restarts_cleanly(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/f.bin"] = BODY
    file_server.mode = "ignore-range"
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not stay in front")
    download(file_server.url("/f.bin"), dest, sha256=SHA)
    assert dest.read_bytes() == BODY
    assert file_server.requests[0][1] == "bytes=35-"


def test_part_longer_than_the_file_restarts(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/small.txt"] = b"hello"
    dest = tmp_path / "small.txt"
    (tmp_path / "small.txt.part").write_bytes(b"a much longer partial file")
    download(file_server.url("/small.txt"), dest)
    assert dest.read_bytes() == b"hello"
    assert [r[1] for r in file_server.requests] == ["bytes=26-", None]


def test_no_resume_discards_the_part(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/f.bin"] = BODY
    (tmp_path / "f.bin.part").write_bytes(BODY[:100])
    download(file_server.url("/f.bin"), tmp_path / "f.bin", resume=False)
    assert file_server.requests == [("/f.bin", None)]


def test_checksum_mismatch_removes_everything(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/f.bin"] = BODY
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download(file_server.url("/f.bin"), dest, sha256="0" * 64)
    assert SHA in info.value.message
    assert sorted(os.listdir(tmp_path)) == []


def test_unreachable_server_is_a_clear_error(free_port: int, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"could not reach 127\.0\.0\.1") as info:
        download(f"http://127.0.0.1:{free_port}/x.txt", tmp_path / "x.txt", timeout=5)
    assert "check your network or pass a local file" in info.value.message
    assert not (tmp_path / "x.txt").exists()


def test_http_error_names_the_status(file_server: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404") as info:
        download(file_server.url("/missing.txt"), tmp_path / "m.txt")
    assert info.value.hint == "check the URL"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        download("ftp://example.org/x", tmp_path / "x")
    with pytest.raises(ConfigError, match="64 hex"):
        download("http://127.0.0.1/x", tmp_path / "x", sha256="abc")
    with pytest.raises(ConfigError, match="directory"):
        download("http://127.0.0.1/x.txt", tmp_path)


def test_progress_lines(file_server: Any, tmp_path: Path) -> None:
    import io

    from lego.protocols import make_progress

    file_server.files["/f.bin"] = BODY
    stream = io.StringIO()
    with make_progress("plain", stream=stream, interval=0.0) as display:
        download(file_server.url("/f.bin"), tmp_path / "f.bin", progress=display, chunk_size=65536)
        display.message("still open")  # a caller's display is left open
    lines = stream.getvalue().splitlines()
    assert lines[0] == "downloading f.bin (249.2 KiB) ..."
    assert lines[1].startswith("  downloading f.bin: 64.0 KiB of 249.2 KiB (26%)")
    assert lines[-2].startswith("downloading f.bin: done, 249.2 KiB in ")
    assert lines[-1] == "still open"


@pytest.mark.parametrize(
    ("option", "key"), [({"retries": -1}, "retries"), ({"timeout": 0}, "timeout")]
)
def test_bad_options(tmp_path: Path, option: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        download("http://127.0.0.1/x.txt", tmp_path / "x.txt", **option)
    assert info.value.key == key


def test_helpers(tmp_path: Path) -> None:
    assert is_url("https://x.org/a")
    assert is_url("http://x")
    assert not is_url("data/file.txt")
    (tmp_path / "f").write_bytes(BODY)
    assert sha256_file(tmp_path / "f", chunk_size=1000) == SHA
