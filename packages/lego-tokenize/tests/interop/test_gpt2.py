from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiktoken.load

from lego.protocols import CompatibilityError, ConfigError, FormatError
from lego.tokenize.byte_level import token_to_str
from lego.tokenize.interop.gpt2 import VOCAB_BPE_HEADER, read_gpt2_files, write_gpt2_files

Trained = tuple[dict[bytes, int], list[tuple[bytes, bytes]]]
EOT = {"<|endoftext|>": 406}


@pytest.fixture
def files(tmp_path: Path, trained_gpt2_order: Trained) -> tuple[Path, Path]:
    ranks, _ = trained_gpt2_order
    encoder, vocab = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    write_gpt2_files(encoder, vocab, ranks=ranks, special_tokens=EOT)
    return encoder, vocab


def test_round_trip(files: tuple[Path, Path], trained_gpt2_order: Trained) -> None:
    ranks, merges = trained_gpt2_order
    got_ranks, got_specials = read_gpt2_files(*files)
    assert got_ranks == ranks
    assert got_specials == EOT
    lines = files[1].read_text(encoding="utf-8").split("\n")
    assert lines[0] == VOCAB_BPE_HEADER
    assert lines[1] == f"{token_to_str(merges[0][0])} {token_to_str(merges[0][1])}"
    assert len(lines) == 1 + len(merges) + 1  # header, merges, final newline


def test_tiktokens_own_loader_agrees(
    files: tuple[Path, Path], trained_gpt2_order: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
    ranks, _ = trained_gpt2_order
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files[1]), str(files[0]))
    assert theirs == ranks


def test_identity_byte_order_round_trips(tmp_path: Path, trained: Trained) -> None:
    ranks, _ = trained
    encoder, vocab = tmp_path / "e.json", tmp_path / "v.bpe"
    write_gpt2_files(encoder, vocab, ranks=ranks)
    assert read_gpt2_files(encoder, vocab) == (ranks, {})


def _rewrite(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def _merge_line(files: tuple[Path, Path], number: int) -> str:
    return files[1].read_text(encoding="utf-8").split("\n")[number - 1]


def test_missing_file(tmp_path: Path, files: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match=r"vocab\.bpe file not found") as info:
        read_gpt2_files(files[0], tmp_path / "nope.bpe")
    assert info.value.path == str(tmp_path / "nope.bpe")


def test_files_swapped(files: tuple[Path, Path]) -> None:
    with pytest.raises(FormatError, match="not valid JSON") as info:
        read_gpt2_files(files[1], files[0])
    assert info.value.path == str(files[1])


def test_malformed_merge_line(files: tuple[Path, Path]) -> None:
    line = _merge_line(files, 5)
    _rewrite(files[1], "\n" + line + "\n", "\n" + line.replace(" ", "  ") + "\n")
    with pytest.raises(FormatError, match="expected a merge 'left right'") as info:
        read_gpt2_files(*files)
    assert (info.value.path, info.value.line) == (str(files[1]), 5)


def test_merge_uses_an_undefined_token(
    files: tuple[Path, Path], trained_gpt2_order: Trained
) -> None:
    # Swap two merges where the later one uses the earlier one's result.
    merges = trained_gpt2_order[1]
    index = next(i for i, (left, _) in enumerate(merges) if left in {a + b for a, b in merges[:i]})
    used = next(j for j, (a, b) in enumerate(merges) if a + b == merges[index][0])
    lines = files[1].read_text(encoding="utf-8").split("\n")
    lines[1 + used], lines[1 + index] = lines[1 + index], lines[1 + used]
    files[1].write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(FormatError, match="which no earlier line creates") as info:
        read_gpt2_files(*files)
    assert info.value.line == 2 + used


def test_truncated_vocab_bpe(files: tuple[Path, Path]) -> None:
    lines = files[1].read_text(encoding="utf-8").split("\n")
    files[1].write_text("\n".join(lines[:100]) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match="no merge that creates it") as info:
        read_gpt2_files(*files)
    assert info.value.hint is not None
    assert "truncated" in info.value.hint


def test_truncated_mid_line(files: tuple[Path, Path]) -> None:
    text = files[1].read_text(encoding="utf-8")
    files[1].write_text(text[: text.index(" ", 200)], encoding="utf-8")
    with pytest.raises(FormatError, match="expected a merge") as info:
        read_gpt2_files(*files)
    assert info.value.line == text[: text.index(" ", 200)].count("\n") + 1


def test_merge_result_not_in_encoder(files: tuple[Path, Path]) -> None:
    encoder = json.loads(files[0].read_text(encoding="utf-8"))
    line = _merge_line(files, 3)
    del encoder[line.replace(" ", "")]
    files[0].write_text(json.dumps(encoder), encoding="utf-8")
    with pytest.raises(FormatError, match=r"not in encoder\.json") as info:
        read_gpt2_files(*files)
    assert (info.value.path, info.value.line) == (str(files[1]), 3)


def test_duplicate_merge(files: tuple[Path, Path]) -> None:
    line = _merge_line(files, 2)
    files[1].write_text(files[1].read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match="an earlier line already creates") as info:
        read_gpt2_files(*files)
    assert info.value.line is not None


def test_ids_out_of_merge_order(files: tuple[Path, Path]) -> None:
    encoder = json.loads(files[0].read_text(encoding="utf-8"))
    first, second = (_merge_line(files, n).replace(" ", "") for n in (2, 3))
    encoder[first], encoder[second] = encoder[second], encoder[first]
    files[0].write_text(json.dumps(encoder), encoding="utf-8")
    with pytest.raises(FormatError, match=r"not above the ids of its parts") as info:
        read_gpt2_files(*files)
    assert info.value.line == 3


def test_missing_single_byte(files: tuple[Path, Path]) -> None:
    encoder = json.loads(files[0].read_text(encoding="utf-8"))
    del encoder[token_to_str(b"~")]
    files[0].write_text(json.dumps(encoder), encoding="utf-8")
    with pytest.raises(FormatError, match="single byte 0x7e") as info:
        read_gpt2_files(*files)
    assert info.value.key == "~"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2, 3]", "must hold a JSON object"),
        ('{"a": "x"}', "not a non-negative integer"),
        ('{"a": 1, "b": 1}', "share the id 1"),
        ('{"a": 1, "a": 2}', "repeats the key"),
        ('{"a": 1', "ends too early"),
    ],
)
def test_bad_encoder_json(files: tuple[Path, Path], content: str, message: str) -> None:
    files[0].write_text(content, encoding="utf-8")
    with pytest.raises(FormatError, match=message) as info:
        read_gpt2_files(*files)
    assert info.value.path == str(files[0])


def test_empty_vocab_bpe(files: tuple[Path, Path]) -> None:
    files[1].write_text(VOCAB_BPE_HEADER + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match="holds no merges"):
        read_gpt2_files(*files)


def test_windows_line_ends_are_read(files: tuple[Path, Path], trained_gpt2_order: Trained) -> None:
    text = files[1].read_text(encoding="utf-8")
    files[1].write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    assert read_gpt2_files(*files)[0] == trained_gpt2_order[0]


@pytest.mark.parametrize(
    ("specials", "message"),
    [
        ({"!": 406}, "spelled like an ordinary token"),
        ({"<|endoftext|>": 3}, "an ordinary token's id"),
    ],
)
def test_write_rejects_bad_specials(
    tmp_path: Path, trained_gpt2_order: Trained, specials: dict[str, int], message: str
) -> None:
    with pytest.raises(CompatibilityError, match=message):
        write_gpt2_files(
            tmp_path / "e.json",
            tmp_path / "v.bpe",
            ranks=trained_gpt2_order[0],
            special_tokens=specials,
        )
    assert not (tmp_path / "e.json").exists()


def test_write_rejects_a_special_that_looks_like_a_missing_merge(
    tmp_path: Path, trained_gpt2_order: Trained
) -> None:
    ranks, merges = trained_gpt2_order
    left, right = merges[-1]
    lookalike = (left + right + left).decode("utf-8")
    with pytest.raises(CompatibilityError, match="can be formed from two ordinary tokens"):
        write_gpt2_files(
            tmp_path / "e.json",
            tmp_path / "v.bpe",
            ranks=ranks,
            special_tokens={lookalike: len(ranks)},
        )


def test_write_rejects_gapped_ids(tmp_path: Path, trained: Trained) -> None:
    ranks = dict(trained[0])
    top = max(ranks, key=lambda t: ranks[t])
    ranks[top] += 5
    with pytest.raises(CompatibilityError, match="must be 0"):
        write_gpt2_files(tmp_path / "e.json", tmp_path / "v.bpe", ranks=ranks)
