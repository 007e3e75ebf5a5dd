r"""Alpaca-style instruction prompts (Stanford Alpaca's two formats).

With an input::

    Below is an instruction that describes a task, paired with an input that provides
    further context. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {output}<end-of-text>

Without one (empty or missing ``input``), the first sentence drops the "paired with an
input" clause and the ``### Input:`` block is left out. The prompt (everything up to and
including ``### Response:\n``) is masked; the output and the end-of-text token are trained.
"""

from __future__ import annotations

from typing import Final

from lego.protocols.chat import Segment

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_NO_INPUT",
    "format_alpaca_prompt",
    "alpaca_segments",
]

ALPACA_PROMPT: Final = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
"""The prompt for records with an input (``str.format`` fields ``instruction``, ``input``)."""

ALPACA_PROMPT_NO_INPUT: Final = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
"""The prompt for records without an input (``str.format`` field ``instruction``)."""


def format_alpaca_prompt(instruction: str, input: str = "") -> str:
    r"""Format the prompt of an Alpaca record (the text before the response).

    Args:
        instruction: The task.
        input: Extra context; empty selects the no-input format.

    Returns:
        The prompt, ending with ``"### Response:\n"``.
    """
    if input:
        return ALPACA_PROMPT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def alpaca_segments(
    instruction: str, input: str, output: str, *, eos_token: str | None
) -> list[Segment]:
    """Render an Alpaca record to segments: a masked prompt, a trained output and EOS.

    Args:
        instruction: The task.
        input: Extra context (may be empty).
        output: The response to train on.
        eos_token: The special token appended after the output (trained), or None for none.

    Returns:
        The segments, for [`encode_segments()`][lego.data.encode.encode_segments].
    """
    segments = [
        Segment(format_alpaca_prompt(instruction, input)),
        Segment(output, train=True),
    ]
    if eos_token is not None:
        segments.append(Segment(eos_token, special=True, train=True))
    return segments
