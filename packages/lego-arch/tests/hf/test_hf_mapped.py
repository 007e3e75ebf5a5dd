"""MappedSafetensors: zero-copy views agree with safetensors; corrupt files are refused."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lego.arch.hf.mapped import MappedSafetensors
from lego.protocols import FormatError


def test_views_equal_safetensors_reads(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.arange(7, dtype=torch.int64),
        "d": torch.randn(2, 2).to(torch.float16),
        "e": torch.zeros(0, 3),
    }
    file = tmp_path / "x.safetensors"
    save_file(tensors, str(file))
    mapped = MappedSafetensors(file)
    assert sorted(mapped.keys()) == sorted(tensors)
    expected = load_file(file)
    for name in tensors:
        view = mapped.view(name)
        assert view is not None
        assert view.dtype == expected[name].dtype
        assert torch.equal(view, expected[name])
        copy = mapped.read(name)
        assert mapped.dtype(name) == copy.dtype == expected[name].dtype
        assert torch.equal(copy, expected[name])
        assert copy.untyped_storage().nbytes() == copy.numel() * copy.element_size()


def test_writes_to_a_view_do_not_reach_the_file(tmp_path: Path) -> None:
    file = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4)}, str(file))
    before = file.read_bytes()
    view = MappedSafetensors(file).view("a")
    assert view is not None
    view.add_(1.0)
    assert torch.equal(view, torch.ones(4))
    assert file.read_bytes() == before


def _raw(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    "content",
    [
        b"abc",
        _raw(b"not json"),
        _raw(b"[1, 2]"),
        struct.pack("<Q", 10**9) + b"{}",
        _raw(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', b"\0" * 4),
        _raw(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b""),
        _raw(b'{"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    ],
)
def test_corrupt_files_are_format_errors(tmp_path: Path, content: bytes) -> None:
    file = tmp_path / "bad.safetensors"
    file.write_bytes(content)
    with pytest.raises(FormatError) as info:
        MappedSafetensors(file)
    assert info.value.path == str(file)
