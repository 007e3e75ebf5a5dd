"""Supervised fine-tuning: data, stop and pad tokens, packing, the trainer, LoRA / QLoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lego.align import (
    SFTConfig,
    SFTDataset,
    SFTObjective,
    SFTTrainer,
    accepts_document_ids,
    check_stop_tokens,
    generation_stop_ids,
    resolve_pad_id,
    truncate_left,
)
from lego.data import PaddingCollator, TokenizedExample, document_attention_mask, pack_examples
from lego.data.packing import PackedCollator
from lego.protocols import IGNORE_INDEX, ConfigError, DataError
from lego.protocols.chat import ChatMLTemplate, ChatTemplate, Llama3Template, Message, Segment
from lego.train import TokenObjective, TrainConfig, token_loss

CHATML = ChatMLTemplate()


def trained_text(tok: Any, example: TokenizedExample) -> str:
    return str(tok.decode([t for t in example.labels if t != IGNORE_INDEX]))


def train_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out_dir": str(tmp_path / "run"),
        "max_steps": 4,
        "progress": "none",
        "peak_flops": 1e12,
        "optim": {"lr": 3e-2, "min_lr": 3e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
    }
    settings.update(overrides)
    return TrainConfig(**settings)


ROWS: list[dict[str, Any]] = [
    {"prompt": "what is one plus one?", "completion": "two."},
    {"prompt": "say hi.", "completion": "hi!"},
    {
        "messages": [
            {"role": "user", "content": "name a color."},
            {"role": "assistant", "content": "red."},
        ]
    },
    {"instruction": "count to three.", "output": "1 2 3"},
    {"prompt": "spell cat.", "completion": "c a t"},
    {"prompt": "what is ice?", "completion": "cold water."},
]


# -- stop and pad tokens -----------------------------------------------------------------------


def test_stop_tokens_agree(chars: Any) -> None:
    stops = check_stop_tokens(chars, CHATML, eos_token="<|im_end|>")
    assert stops.trained_end_id == stops.eos_id == 2
    assert stops.generation_ids == (2,)
    # a base tokenizer (EOS <|endoftext|>) is fine when generation stops on both
    both = check_stop_tokens(
        chars, CHATML, eos_token="<|endoftext|>", generation_eos_token_ids=[0, 2]
    )
    assert (both.eos_id, both.end_of_turn_id) == (0, 2)
    plain = check_stop_tokens(chars, None, eos_token="<|endoftext|>")
    assert plain.trained_end_id == plain.eos_id == 0
    assert plain.end_of_turn_id is None


def test_stop_tokens_that_disagree_are_named(chars: Any) -> None:
    with pytest.raises(ConfigError) as info:
        check_stop_tokens(chars, CHATML, eos_token="<|endoftext|>", generation_eos_token_ids=[0])
    text = str(info.value)
    assert "'<|endoftext|>' (0)" in text  # the tokenizer's EOS
    assert "'<|im_end|>' (2)" in text  # the template's end-of-turn
    assert "generation config stops on '<|endoftext|>' (0)" in text
    assert "[0, 2]" in text  # the fix
    with pytest.raises(ConfigError, match="EOS only"):
        check_stop_tokens(chars, CHATML, eos_token="<|endoftext|>")
    with pytest.raises(ConfigError, match="stop tokens disagree"):  # EOS itself must stop
        check_stop_tokens(chars, CHATML, eos_token="<|endoftext|>", generation_eos_token_ids=[2])
    with pytest.raises(ConfigError, match="plain completions end with"):
        check_stop_tokens(chars, None, eos_token="<|endoftext|>", generation_eos_token_ids=[2])


class NoEndTemplate(ChatTemplate):
    name = "no-end"
    special_tokens = ("<|im_start|>",)
    end_of_turn = ""

    def _message(self, message: Message, *, first: bool, train: bool) -> list[Segment]:
        return [Segment(message["content"], train=train)]

    def _generation_prompt(self) -> list[Segment]:
        return []


def test_a_template_without_end_of_turn_is_refused(chars: Any) -> None:
    with pytest.raises(ConfigError, match="no end-of-turn token") as info:
        check_stop_tokens(chars, NoEndTemplate(), eos_token="<|endoftext|>")
    assert info.value.key == "template"
    with pytest.raises(ConfigError, match="not a special token"):
        check_stop_tokens(chars, Llama3Template(), eos_token="<|endoftext|>")
    with pytest.raises(ConfigError, match="eos_token '</s>'"):
        check_stop_tokens(chars, CHATML, eos_token="</s>")


def test_pad_token(chars: Any, kit: Any) -> None:
    assert resolve_pad_id(chars, None, avoid=(0, 2)) == 3  # the tokenizer's <|pad|>
    assert resolve_pad_id(chars, "<|im_start|>", avoid=(0, 2)) == 1
    with pytest.raises(ConfigError, match="stop token"):
        resolve_pad_id(chars, "<|im_end|>", avoid=(0, 2))
    no_pad = kit.CharTokenizer({"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2})
    with pytest.raises(ConfigError, match="no pad token") as info:
        resolve_pad_id(no_pad, None, avoid=(0, 2))
    assert "pad_token: '<|im_start|>'" in str(info.value)  # says which one to use
    only_stops = kit.CharTokenizer({"<|endoftext|>": 0})
    with pytest.raises(ConfigError, match=r"add a '<\|pad\|>' special token"):
        resolve_pad_id(only_stops, None, avoid=(0,))


def test_generation_stop_ids(tmp_path: Path) -> None:
    assert generation_stop_ids(tmp_path) is None
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert generation_stop_ids(tmp_path) == (7,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert generation_stop_ids(tmp_path) == (7, 9)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ConfigError, match="eos_token_id"):
        generation_stop_ids(tmp_path)


# -- the data ---------------------------------------------------------------------------------


def test_completions_and_end_of_turn_are_trained(chars: Any) -> None:
    data = SFTDataset(ROWS, chars, template=CHATML)
    assert [trained_text(chars, ex) for ex in data] == [
        "two.<|im_end|>",
        "hi!<|im_end|>",
        "red.<|im_end|>",
        "1 2 3<|im_end|>",
        "c a t<|im_end|>",
        "cold water.<|im_end|>",
    ]
    first = data[0]
    rendered = "<|im_start|>user\nwhat is one plus one?<|im_end|>\n<|im_start|>assistant\ntwo."
    assert chars.decode(first.input_ids) == rendered + "<|im_end|>"  # the last token is a label
    assert first.labels[-1] == IGNORE_INDEX  # the newline after <|im_end|> is not trained


def test_conversational_prompt_completion(chars: Any) -> None:
    row = {
        "prompt": [
            {"role": "user", "content": "hi."},
            {"role": "assistant", "content": "hello."},
            {"role": "user", "content": "bye."},
        ],
        "completion": [{"role": "assistant", "content": "bye!"}],
    }
    (example,) = SFTDataset([row], chars, template=CHATML)
    assert trained_text(chars, example) == "bye!<|im_end|>"  # the prompt's turn stays masked


def test_plain_text_appends_a_trained_eos(chars: Any) -> None:
    rows = [{"prompt": "say a", "completion": " a"}]
    (example,) = SFTDataset(rows, chars, template=None, eos_token="<|endoftext|>")
    assert chars.decode(example.input_ids) == "say a a"
    assert trained_text(chars, example) == " a<|endoftext|>"
    with pytest.raises(DataError, match="prompt / completion rows only") as info:
        SFTDataset([ROWS[2]], chars, template=None)
    assert info.value.line == 1


def test_long_prompts_are_cut_from_the_left(chars: Any) -> None:
    rows = [{"prompt": "a" * 40, "completion": "yes."}, {"prompt": "b", "completion": "no."}]
    data = SFTDataset(rows, chars, template=CHATML, max_length=30)
    assert data.truncated == [1]
    assert data.report() == {"examples": 2, "truncated": 1, "dropped": 0, "empty": 0}
    cut = data[0]
    assert len(cut) == 30
    assert trained_text(chars, cut) == "yes.<|im_end|>"  # the completion and its end token stay
    assert chars.decode(cut.input_ids).startswith("a")  # what went is the prompt's start


def test_completions_that_do_not_fit(chars: Any) -> None:
    rows = [{"prompt": "a", "completion": "x" * 30}, {"prompt": "b", "completion": "no."}]
    data = SFTDataset(rows, chars, template=CHATML, max_length=20)
    assert data.dropped == [1]
    assert len(data) == 1
    with pytest.raises(DataError, match="does not fit max_length=20") as info:
        SFTDataset(rows, chars, template=CHATML, max_length=20, on_overflow="error")
    assert info.value.line == 1


def test_empty_completions(chars: Any) -> None:
    rows = [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": "no."}]
    with pytest.raises(DataError, match="completion is empty") as info:
        SFTDataset(rows, chars, template=CHATML)
    assert info.value.line == 1
    data = SFTDataset(rows, chars, template=CHATML, empty_completion="skip")
    assert data.empty == [1]
    assert len(data) == 1


def test_truncate_left_keeps_every_trained_label() -> None:
    labels = [IGNORE_INDEX] * 6 + [5, 6, IGNORE_INDEX, 7]
    example = TokenizedExample(list(range(10)), labels)
    for length in range(4, 12):
        cut = truncate_left(example, length)
        assert cut is not None
        assert len(cut) == min(length, 10)
        assert [t for t in cut.labels if t != IGNORE_INDEX] == [5, 6, 7]
        assert cut.input_ids == example.input_ids[10 - len(cut) :]
    assert truncate_left(example, 3) is None


# -- packing ------------------------------------------------------------------------------------


def test_document_ids_are_detected(kit: Any) -> None:
    from lego.peft import LoraConfig, apply_lora

    assert accepts_document_ids(kit.DocumentLM())
    assert not accepts_document_ids(kit.WideLM())
    adapted = apply_lora(kit.DocumentLM(), LoraConfig(target_modules=("mix",), r=2))
    assert accepts_document_ids(adapted)  # looked through lego-peft's **kwargs forward


def test_packed_loss_equals_the_padded_loss(chars: Any, kit: Any) -> None:
    # A model that keeps documents apart gives every token of a packed row the logits it
    # has alone, so the packed loss equals the padded one.
    torch.manual_seed(0)
    model = kit.DocumentLM()
    data = SFTDataset(ROWS, chars, template=CHATML)
    padded = PaddingCollator(pad_id=3, eos_id=2)(list(data))
    rows = pack_examples(data, max_length=96, pad_id=3)
    assert len(rows) < len(data)  # really packed
    packed: Any = PackedCollator()(rows)
    loss_padded = TokenObjective()(model, padded)
    loss_packed = SFTObjective(document_ids=True)(model, packed)
    assert int(loss_packed.tokens) == int(loss_padded.tokens)
    torch.testing.assert_close(loss_packed.loss_sum, loss_padded.loss_sum, rtol=1e-6, atol=1e-6)
    # without the document ids the documents of a row see each other: another loss
    crossing = SFTObjective(document_ids=False)(model, packed)
    assert abs(float((crossing.loss_sum - loss_padded.loss_sum).detach())) > 1e-3
    # the block mask lego-data builds from the same ids is what the model applied
    mask = document_attention_mask(packed["document_ids"])
    assert mask.shape == (len(rows), 1, 96, 96)


def test_packing_needs_a_model_that_keeps_documents_apart(
    tmp_path: Path, chars: Any, kit: Any
) -> None:
    config = SFTConfig(eos_token="<|im_end|>", packing=True, max_length=96, batch_size=2)
    with pytest.raises(ConfigError, match="cannot keep packed documents apart") as info:
        SFTTrainer(
            model=kit.WideLM(),
            tokenizer=chars,
            train_data=ROWS,
            config=config,
            train=train_config(tmp_path),
        )
    assert info.value.key == "packing"


# -- the trainer -----------------------------------------------------------------------------------


def sft(tmp_path: Path, chars: Any, model: nn.Module, **settings: Any) -> SFTTrainer:
    train = settings.pop("train", {})
    config = SFTConfig(**{"eos_token": "<|im_end|>", "batch_size": 3, "max_length": 64, **settings})
    return SFTTrainer(
        model=model,
        tokenizer=chars,
        train_data=ROWS,
        config=config,
        train=train_config(tmp_path, **train),
    )


def test_the_first_step_is_the_completion_loss(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    model = kit.WideLM()
    expected_model = kit.WideLM()
    expected_model.load_state_dict(model.state_dict())
    trainer = sft(tmp_path, chars, model, shuffle=False, train={"max_steps": 1})
    data = SFTDataset(ROWS, chars, template=CHATML)
    first = PaddingCollator(pad_id=3, eos_id=2)(list(data)[:3])
    loss_sum, n = token_loss(
        expected_model(
            first["input_ids"],
            attention_mask=first["attention_mask"],
            position_ids=first["position_ids"],
        ),
        first["labels"],
    )
    result = trainer.trainer.train_step()
    trainer.close()
    assert result["loss"] == pytest.approx(float(loss_sum.detach() / n), rel=1e-5)
    assert result["tokens"] == int(n)


def test_training_lowers_the_loss_and_logs_the_data(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = [*ROWS, {"prompt": "x" * 80, "completion": "long prompt."}]
    config = SFTConfig(eos_token="<|im_end|>", batch_size=3, max_length=40, val_fraction=0.0)
    trainer = SFTTrainer(
        model=kit.WideLM(),
        tokenizer=chars,
        train_data=rows,
        config=config,
        train=train_config(tmp_path, max_steps=30, log_every=1),
    )
    full = SFTDataset(rows, chars, template=CHATML, max_length=1000)
    too_long = sum(len(ex) > 40 for ex in full)
    assert too_long >= 2  # the long prompt and others
    assert trainer.train_set.report()["truncated"] == too_long
    trainer.fit()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    data = [r for r in records if r["split"] == "data"]
    assert data[0]["train_truncated"] == too_long
    assert data[0]["train_examples"] == 7
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_packed_training_and_evaluation(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    trainer = sft(
        tmp_path,
        chars,
        kit.DocumentLM(),
        packing=True,
        max_length=96,
        batch_size=1,
        train={"max_steps": 2, "eval_every": 2},
    )
    assert isinstance(trainer.trainer.objective, SFTObjective)
    assert trainer.trainer.objective.document_ids
    trainer_eval = trainer
    state = trainer_eval.fit()
    assert state.step == 2
    assert "val_loss" not in state.metrics  # no evaluation data was given


def test_evaluation_split(tmp_path: Path, chars: Any, kit: Any) -> None:
    torch.manual_seed(0)
    trainer = sft(
        tmp_path, chars, kit.WideLM(), val_fraction=0.34, train={"max_steps": 2, "eval_every": 2}
    )
    assert len(trainer.train_set) + len(trainer.eval_set or []) == len(ROWS)
    state = trainer.fit()
    assert state.metrics["val_ppl"] == pytest.approx(
        float(torch.tensor(state.metrics["val_loss"]).exp()), rel=1e-6
    )


def test_lora_trains_only_the_adapter(tmp_path: Path, chars: Any, kit: Any) -> None:
    from lego.peft import LoraConfig, LoraModel

    torch.manual_seed(0)
    base = kit.WideLM()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = sft(
        tmp_path,
        chars,
        base,
        finetune="lora",
        lora=LoraConfig(target_modules=("mix",), r=2, lora_alpha=4.0),
        train={"max_steps": 3},
    )
    assert isinstance(trainer.model, LoraModel)
    trainer.fit()
    after = base.state_dict()
    for name, value in before.items():
        original = name.replace("mix.weight", "mix.base_layer.weight").replace(
            "mix.bias", "mix.base_layer.bias"
        )
        torch.testing.assert_close(after[original], value, rtol=0, atol=0)
    adapter = trainer.model.adapter_state_dict()
    assert any(bool(t.abs().sum() > 0) for k, t in adapter.items() if "lora_B" in k)
    assert (
        tmp_path / "run" / "checkpoints" / "step-00000003" / "model" / "adapter_config.json"
    ).is_file()


def test_qlora_quantizes_the_base(tmp_path: Path, chars: Any, kit: Any) -> None:
    from lego.peft import LoraConfig, NF4Linear

    torch.manual_seed(0)
    model = kit.WideLM(width=16)
    trainer = sft(
        tmp_path,
        chars,
        model,
        finetune="qlora",
        qlora_block_size=64,
        lora=LoraConfig(target_modules=("mix",), r=2),
        train={"max_steps": 2},
    )
    assert any(isinstance(m, NF4Linear) for m in trainer.model.modules())
    state = trainer.fit()
    assert state.step == 2
    assert state.metrics["loss"] == state.metrics["loss"]  # finite, not NaN


def test_resume_is_exact(tmp_path: Path, chars: Any, kit: Any) -> None:
    def run(out: str, steps: int, resume: str = "") -> nn.Module:
        torch.manual_seed(0)
        model = kit.WideLM()
        trainer = sft(
            tmp_path,
            chars,
            model,
            batch_size=2,
            train={
                "out_dir": str(tmp_path / out),
                "max_steps": steps,
                "resume": resume,
                "checkpoint_every": 2,
            },
        )
        trainer.fit()
        return model

    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume="latest")
    for x, y in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(x, y)
