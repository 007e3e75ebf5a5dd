"""lego-data's chat templates against transformers' ``apply_chat_template`` (offline).

A small byte-level BPE is trained locally with HF tokenizers; the same vocabulary drives both
sides. Checked: the rendered strings are equal, the token ids are equal (our chunk-by-chunk
encoding equals encoding the whole string), and our trained tokens are exactly the tokens
transformers marks with ``return_assistant_tokens_mask`` for a template with
``{% generation %}`` blocks around the assistant content and its end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("jinja2")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lego.data.encode import encode_chat  # noqa: E402
from lego.protocols import IGNORE_INDEX  # noqa: E402
from lego.protocols.chat import ChatMLTemplate, Llama3Template  # noqa: E402

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_GENERATION = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
)
# Meta's Llama 3 Instruct template, as published with the model.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA3_GENERATION = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
)

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "I am fine."}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How are you?\n\nTell me."},
        {"role": "assistant", "content": "  I am fine, thank you!"},
        {"role": "user", "content": "Say it in Greek: καλά"},
        {"role": "assistant", "content": "\n元気です。 👍\n"},
    ],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "there there there"}],
]


class HFAdapter:
    """A lego ``Tokenizer`` over a transformers fast tokenizer (same vocabulary)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {t: self.hf.convert_tokens_to_ids(t) for t in SPECIALS}

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids)))


@pytest.fixture(scope="module")
def backend() -> Any:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [
        "Hello there, how are you? I am fine, thank you!\n\nuser assistant system there there  \n  "
    ] * 50
    tok.train_from_iterator(text, trainer)
    return tok


def hf_tokenizer(backend: Any, template: str) -> Any:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, bos_token="<|begin_of_text|>"
    )


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize(
    ("ours", "reference", "with_generation"),
    [
        (ChatMLTemplate(), CHATML, CHATML_GENERATION),
        (Llama3Template(), LLAMA3, LLAMA3_GENERATION),
    ],
    ids=["chatml", "llama3"],
)
def test_rendering_ids_and_mask_match_transformers(
    backend: Any,
    conversation: list[dict[str, str]],
    ours: Any,
    reference: str,
    with_generation: str,
) -> None:
    hf = hf_tokenizer(backend, reference)
    assert ours.render(conversation) == hf.apply_chat_template(conversation, tokenize=False)
    prompt = conversation[:-1]
    assert ours.render(prompt, add_generation_prompt=True) == hf.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )

    example = encode_chat(conversation, HFAdapter(hf), template=ours)
    reference_ids = hf.apply_chat_template(conversation, tokenize=True, return_dict=True)
    expected_ids = list(reference_ids["input_ids"])
    assert example.input_ids == expected_ids[:-1]  # inputs: every token but the last
    for t, label in enumerate(example.labels):  # labels: the next token, where trained
        assert label in (IGNORE_INDEX, expected_ids[t + 1])

    masked = hf_tokenizer(backend, with_generation).apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert list(masked["input_ids"]) == expected_ids
    trained = [0] + [int(label != IGNORE_INDEX) for label in example.labels]
    assert trained == list(masked["assistant_masks"])
