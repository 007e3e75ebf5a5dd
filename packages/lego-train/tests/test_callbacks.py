from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lego.train import (
    SampleCallback,
    TrainConfig,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


def test_sample_callback_falls_back_without_lego_generate(
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
        use_lego_generate=False,
    )
    trainer = make_trainer(base_config.replace(max_steps=4), model=model, callbacks=[callback])
    trainer.fit()
    assert [step for step, _ in callback.samples] == [2, 4]
    assert callback.backend == "builtin"
    assert all(len(text.split(",")) == 5 for _, text in callback.samples)
    assert seen[0].startswith("sample @ step 2: 1,2,3")
