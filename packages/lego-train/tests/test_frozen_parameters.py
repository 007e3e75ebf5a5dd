"""A model with frozen parameters (an adapter on a frozen base) trains and checkpoints as such.

The optimizer holds only the parameters that require gradients, and a model that writes its
own model directory (``lego.protocols.PretrainedModel``: ``save_pretrained`` /
``load_weights``, as lego-peft's adapted models do, saving the adapter alone) is
checkpointed and resumed through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lego.protocols import PretrainedModel
from lego.train import TrainConfig


def _freeze_all_but_the_head(model: Any) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("head."))


def test_the_optimizer_holds_only_trainable_parameters(
    make_trainer: Any, base_config: TrainConfig, tiny: Any
) -> None:
    torch.manual_seed(0)
    model = tiny.TinyLM()
    _freeze_all_but_the_head(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = make_trainer(base_config.replace(max_steps=2), model=model)
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    trainer.fit()
    assert all(id(p) in held for p in trainer.optimizer.state)  # AdamW state: head only
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name


class HeadOnlyLM:
    """Mixin: a model directory holding the trainable tensors only (like an adapter)."""

    def save_pretrained(self, path: Any, /, *, state_dict: Any = None) -> Path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        source = state_dict if state_dict is not None else self.state_dict()  # type: ignore[attr-defined]
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
        tensors = {n: t.detach().contiguous() for n, t in source.items() if n in trainable}
        save_file(tensors, str(folder / "trainable.safetensors"))
        return folder

    def load_weights(self, path: Any, /) -> None:
        tensors = load_file(str(Path(path) / "trainable.safetensors"))
        with torch.no_grad():
            for name, parameter in self.named_parameters():  # type: ignore[attr-defined]
                if name in tensors:
                    parameter.copy_(tensors[name])


def test_a_pretrained_model_is_checkpointed_through_its_own_methods(
    make_trainer: Any, base_config: TrainConfig, tiny: Any
) -> None:
    class Model(HeadOnlyLM, tiny.TinyLM):  # type: ignore[misc, name-defined]
        pass

    torch.manual_seed(0)
    model = Model()
    assert isinstance(model, PretrainedModel)
    _freeze_all_but_the_head(model)
    config = base_config.replace(max_steps=4, checkpoint_every=2)
    make_trainer(config, model=model).fit()
    folder = Path(config.out_dir) / "checkpoints" / "step-00000002" / "model"
    assert sorted(load_file(str(folder / "trainable.safetensors"))) == ["head.weight"]
    assert not (folder / "model.safetensors").exists()

    torch.manual_seed(0)
    again = Model()
    _freeze_all_but_the_head(again)
    resumed = make_trainer(config.replace(resume=str(folder.parent), max_steps=4), model=again)
    assert resumed.state.step == 2
    resumed.fit()
    torch.testing.assert_close(again.head.weight, model.head.weight, rtol=0, atol=0)
