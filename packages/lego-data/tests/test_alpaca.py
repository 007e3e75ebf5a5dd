from __future__ import annotations

from lego.data.alpaca import alpaca_segments, format_alpaca_prompt


def test_prompt_with_input() -> None:
    assert format_alpaca_prompt("Add the numbers.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )


def test_prompt_without_input() -> None:
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert format_alpaca_prompt("Say hi.") == expected
    assert format_alpaca_prompt("Say hi.", "") == expected


def test_segments() -> None:
    segments = alpaca_segments("Say hi.", "", "Hi!", eos_token="<|endoftext|>")
    assert [(s.text, s.special, s.train) for s in segments[1:]] == [
        ("Hi!", False, True),
        ("<|endoftext|>", True, True),
    ]
    assert not segments[0].train
    assert len(alpaca_segments("a", "", "b", eos_token=None)) == 2
