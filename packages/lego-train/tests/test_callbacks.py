from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lego.train import (
    SampleCallback,
    TrainConfig,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


def test_sample_callback_samples_with_the_builtin_loop_by_default(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    model = tiny.TinyLM()
    seen: list[str] = []
    callback = SampleCallback(
        model=model,
        prompt_ids=[1, 2, 3],
        decode=lambda ids: ",".join(map(str, ids)),
        every=2,
        max_new_tokens=5,
        emit=seen.append,
    )
    trainer = make_trainer(base_config.replace(max_steps=4), model=model, callbacks=[callback])
    trainer.fit()
    assert [step for step, _ in callback.samples] == [2, 4]
    assert all(len(text.split(",")) == 5 for _, text in callback.samples)
    assert seen[0].startswith("sample @ step 2: 1,2,3")


def test_sample_callback_uses_the_sampler_it_is_given(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    import torch

    calls: list[dict[str, Any]] = []

    def sampler(model: Any, input_ids: torch.Tensor, **settings: Any) -> torch.Tensor:
        calls.append(settings)
        new = torch.full((1, settings["max_new_tokens"]), 7, dtype=torch.long)
        return torch.cat([input_ids, new], dim=1)

    model = tiny.TinyLM()
    callback = SampleCallback(
        model=model,
        prompt_ids=[1, 2],
        decode=lambda ids: ",".join(map(str, ids)),
        every=0,
        max_new_tokens=3,
        top_k=5,
        temperature=0.5,
        seed=11,
        emit=lambda text: None,
        sampler=sampler,
    )
    make_trainer(base_config.replace(max_steps=2), model=model, callbacks=[callback]).fit()
    assert callback.samples == [(2, "7,7,7")]
    assert calls == [{"max_new_tokens": 3, "top_k": 5, "temperature": 0.5, "seed": 11}]
    assert model.training
