from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.data.encode import TokenizedExample
from lego.data.preference import PreferenceCollator, PreferenceDataset, PreferenceExample
from lego.protocols import IGNORE_INDEX, ConfigError, DataError

M = IGNORE_INDEX


def trained_text(example: TokenizedExample) -> str:
    return bytes(label for label in example.labels if 0 <= label < 256).decode()


def test_string_records(tmp_path: Path, byte_tokenizer: Any) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "five"}] * 3
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = PreferenceDataset(path, byte_tokenizer, split="all")
    pair = data[0]
    assert trained_text(pair.chosen) == "4"
    assert trained_text(pair.rejected) == "five"
    prompt = byte_tokenizer.decode(pair.chosen.input_ids)
    assert prompt.startswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4")


def test_conversation_records_mask_the_prompt_answers(byte_tokenizer: Any) -> None:
    record = {
        "prompt": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": "bad",
    }
    pair = PreferenceDataset([record], byte_tokenizer, template="llama3", split="all")[0]
    assert trained_text(pair.chosen) == "good"
    assert trained_text(pair.rejected) == "bad"


def test_alpaca_preferences(byte_tokenizer: Any) -> None:
    pair = PreferenceDataset(
        [{"prompt": "Say hi.", "chosen": "Hi", "rejected": "No"}],
        byte_tokenizer,
        template="alpaca",
        split="all",
    )[0]
    assert [label for label in pair.chosen.labels if label != M] == [ord("H"), ord("i"), 256]


def test_missing_field_names_key_and_line(tmp_path: Path, byte_tokenizer: Any) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n'
    )
    with pytest.raises(DataError, match="lacks the field 'rejected'") as err:
        PreferenceDataset(path, byte_tokenizer, split="all")
    assert err.value.key == "rejected"
    assert err.value.line == 2
    assert err.value.path == str(path)
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        PreferenceDataset(path, byte_tokenizer, split="all")
    with pytest.raises(DataError, match="field 'chosen': message 0 lacks"):
        PreferenceDataset(
            [{"prompt": "a", "chosen": [{"content": "x"}], "rejected": "c"}],
            byte_tokenizer,
            split="all",
        )


def test_collator_pads_both_sides_to_one_length() -> None:
    pairs = [
        PreferenceExample(
            TokenizedExample([1, 2], [M, 3]), TokenizedExample([1, 2, 3, 4], [M, 3, 4, 5])
        ),
        PreferenceExample(TokenizedExample([7], [8]), TokenizedExample([7], [9])),
    ]
    batch = PreferenceCollator(pad_id=0, eos_id=5)(pairs)
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 0, 0], [7, 0, 0, 0]]
    assert batch["chosen_labels"].tolist() == [[M, 3, M, M], [8, M, M, M]]
    assert batch["rejected_input_ids"].tolist() == [[1, 2, 3, 4], [7, 0, 0, 0]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert all(t.shape == (2, 4) and t.dtype == torch.int64 for t in batch.values())
    with pytest.raises(ConfigError, match="pad_id and eos_id"):
        PreferenceCollator(pad_id=5, eos_id=5)
    with pytest.raises(DataError, match="no chosen and rejected"):
        PreferenceCollator(pad_id=0)([{"chosen": pairs[0].chosen}])
