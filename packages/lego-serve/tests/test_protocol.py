"""Request validation: OpenAI's fields into engine requests, and a 400 naming each bad field."""

from __future__ import annotations

from typing import Any

import pytest

from lego.protocols import Tokenizer
from lego.protocols.chat import get_chat_template
from lego.serve.errors import APIError
from lego.serve.protocol import ServedModel, parse_chat, parse_completion, parse_messages


@pytest.fixture
def model(tokenizer: Tokenizer) -> ServedModel:
    return ServedModel(
        name="tiny",
        tokenizer=tokenizer,
        vocab_size=259,
        context_length=64,
        chat_template=get_chat_template("chatml"),
        eos_token="<|endoftext|>",
        end_of_turn_id=257,
    )


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hi", **fields}


def error(body: dict[str, Any], model: ServedModel, parse: Any = parse_chat) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(body, model)
    return caught.value


def test_chat_renders_the_template_and_maps_every_sampling_field(model: ServedModel) -> None:
    req = parse_chat(
        chat(
            max_tokens=5,
            temperature=0.5,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"65": 10, " 66": -100},
            stop="\n",
            seed=7,
            n=3,
            logprobs=True,
            top_logprobs=2,
        ),
        model,
    )
    expected = get_chat_template("chatml").encode(
        model.tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert list(req.prompt_ids) == expected
    assert [p.seed for p in req.params] == [7, 8, 9]
    first = req.params[0]
    assert (first.max_tokens, first.temperature, first.top_p) == (5, 0.5, 0.9)
    assert (first.presence_penalty, first.frequency_penalty) == (0.5, -0.5)
    assert dict(first.logit_bias) == {65: 10.0, 66: -100.0}
    assert first.stop == ("\n",)
    assert (first.logprobs, first.prompt_logprobs) == (2, None)
    assert first.stop_token_ids == (257,)  # the template's end of turn ends the message
    assert req.logprobs
    assert req.top_logprobs == 2


def test_chat_defaults_fill_the_context_and_sample_without_seed(model: ServedModel) -> None:
    req = parse_chat(chat(), model)
    assert len(req.params) == 1
    assert req.params[0].max_tokens == 64 - len(req.prompt_ids)
    assert req.params[0].seed is None
    assert req.params[0].temperature == 1.0
    assert req.params[0].logprobs is None
    assert not req.stream


def test_max_completion_tokens_wins_over_max_tokens(model: ServedModel) -> None:
    assert parse_chat(chat(max_tokens=3, max_completion_tokens=4), model).params[0].max_tokens == 4


def test_unknown_fields_are_ignored_and_null_means_unset(model: ServedModel) -> None:
    req = parse_chat(chat(user="me", metadata={"a": 1}, temperature=None, foo=[1]), model)
    assert req.params[0].temperature == 1.0


def test_stream_options_only_count_when_streaming(model: ServedModel) -> None:
    assert not parse_chat(chat(stream_options={"include_usage": True}), model).include_usage
    req = parse_chat(chat(stream=True, stream_options={"include_usage": True}), model)
    assert req.stream
    assert req.include_usage


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": 1.5}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"999": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": " user", "content": "x"}]}, "messages[0].role"),
        ({"model": 5}, "model"),
    ],
)
def test_bad_chat_fields_are_400s_naming_the_field(
    fields: dict[str, Any], param: str, model: ServedModel
) -> None:
    err = error(chat(**fields), model)
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.param == param


def test_missing_model_is_400_and_another_model_is_404(model: ServedModel) -> None:
    body = chat()
    del body["model"]
    assert (error(body, model).status, error(body, model).param) == (400, "model")
    err = error(chat(model="gpt-4"), model)
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "tiny" in err.message


def test_prompt_longer_than_the_context_names_the_limit(model: ServedModel) -> None:
    err = error(chat(messages=[{"role": "user", "content": "x" * 80}]), model)
    assert err.code == "context_length_exceeded"
    assert "64 tokens" in err.message
    assert err.param == "messages"
    err = error(chat(max_tokens=60), model)
    assert (err.code, err.param) == ("context_length_exceeded", "max_tokens")


def test_message_content_parts_and_developer_role(model: ServedModel) -> None:
    messages = parse_messages(
        [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None},
        ]
    )
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


def test_chat_needs_a_template(tokenizer: Tokenizer) -> None:
    bare = ServedModel(name="tiny", tokenizer=tokenizer, vocab_size=259, context_length=64)
    with pytest.raises(APIError, match="no chat template"):
        parse_chat(chat(), bare)


def test_completion_prompt_forms(model: ServedModel) -> None:
    req = parse_completion(completion(prompt="ab<|endoftext|>"), model)
    assert req.prompts == ((97, 98, 258),)
    assert req.prompt_texts == ("ab<|endoftext|>",)
    req = parse_completion(completion(prompt=["a", "bc"], n=2, seed=3), model)
    assert req.prompts == ((97,), (98, 99))
    assert [p.seed for p in req.params] == [3, 4, 3, 4]
    req = parse_completion(completion(prompt=[104, 105]), model)
    assert (req.prompts, req.prompt_texts) == (((104, 105),), ("hi",))
    req = parse_completion(completion(prompt=[[104], [105, 106]]), model)
    assert req.prompts == ((104,), (105, 106))
    assert req.params[0].max_tokens == 16
    assert req.params[0].stop_token_ids == ()  # completions stop on the engine's EOS only


def test_completion_echo_logprobs_scores_the_prompt(model: ServedModel) -> None:
    req = parse_completion(
        completion(prompt=[[1, 2, 3]], echo=True, logprobs=1, max_tokens=0, temperature=0), model
    )
    params = req.params[0]
    assert (params.max_tokens, params.logprobs, params.prompt_logprobs) == (0, 1, 1)
    assert req.echo
    assert req.logprobs == 1
    # max_tokens 0 with nothing to score: no engine request at all
    assert parse_completion(completion(max_tokens=0), model).params == ()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [[1], []]}, "prompt[1]"),
        ({"prompt": [1, 999]}, "prompt"),
        ({"prompt": [[1], "a", 3]}, "prompt[2]"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": "€"}, "prompt"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"echo": 1}, "echo"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 60, "prompt": "x" * 10}, "max_tokens"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
    ],
)
def test_bad_completion_fields(fields: dict[str, Any], param: str, model: ServedModel) -> None:
    body = completion(**fields)
    if fields.get("prompt", "") is None:
        del body["prompt"]
    err = error(body, model, parse_completion)
    assert (err.status, err.param) == (400, param)
