"""Conforming and non-conforming fakes are told apart by every runtime-checkable contract.

The fakes are plain Python objects (no torch here): contracts are structural, so anything
with the right members conforms, and missing one member is enough to fail.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from lego.protocols import (
    Adapter,
    Attention,
    BatchSource,
    CachedCausalLM,
    CausalLM,
    Checkpointable,
    FeedForward,
    HFNamedModel,
    KVCache,
    LayerKVCache,
    LogitsProcessor,
    ModelConfig,
    ModelConfigLike,
    Norm,
    PositionalEncoding,
    PretrainedModel,
    Tokenizer,
    TrainableTokenizer,
    TrainerCallback,
    TrainerState,
)


class FakeTokenizer:
    vocab_size = 256
    special_tokens: Mapping[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode(errors="replace")


class FakeTrainableTokenizer(FakeTokenizer):
    def train(self, data: Any, vocab_size: int, **kwargs: Any) -> None:
        self.vocab_size = vocab_size

    def save(self, path: Any) -> None:
        Path(path).write_text("{}")


class NoDecode:
    vocab_size = 256
    special_tokens: Mapping[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return []


class Module:
    """Mimics torch.nn.Module: __call__ routes to forward."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0]


class CallOnly:
    def __call__(self, x: Any) -> Any:
        return x


class FakeLayerCache:
    seq_len = 0
    max_seq_len = 8

    def update(self, k: Any, v: Any) -> tuple[Any, Any]:
        return k, v


class FakeCache:
    seq_len = 0
    max_seq_len = 8
    batch_size = 1

    def __len__(self) -> int:
        return 2

    def __getitem__(self, layer: int) -> FakeLayerCache:
        return FakeLayerCache()

    def reset(self) -> None: ...
    def crop(self, length: int) -> None: ...
    def reorder(self, indices: Any) -> None: ...
    def copy_rows(self, source: Any, *, rows: Any, source_rows: Any, start: int = 0) -> None: ...
    def trim_front(self, count: int) -> None: ...


class CacheWithoutReorder(FakeCache):
    reorder = None  # type: ignore[assignment]


class CacheWithoutRowCopies(FakeCache):
    copy_rows = None  # type: ignore[assignment]


class FakeLM(Module):
    config = ModelConfig(vocab_size=10, context_length=4)


class FakeCachedLM(FakeLM):
    def new_kv_cache(self, batch_size: int, max_seq_len: int, **kwargs: Any) -> FakeCache:
        return FakeCache()


class Stateful:
    def state_dict(self) -> dict[str, Any]:
        return {"position": 3}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class FakeBatches(Stateful):
    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield {"input_ids": [[1]], "labels": [[2]]}


class FakeState:
    step = 1
    max_steps = 10
    tokens_seen = 1024
    metrics: Mapping[str, float] = {"loss": 3.0}
    should_stop = False


class FakeAdapter:
    merged = False

    @property
    def adapter_config(self) -> dict[str, Any]:
        return {"peft_type": "LORA", "r": 8}

    def adapter_state_dict(self) -> dict[str, Any]:
        return {}

    def load_adapter_state_dict(self, state_dict: dict[str, Any]) -> None: ...
    def merge(self) -> None: ...
    def unmerge(self) -> None: ...

    def disabled(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save_adapter(self, path: Any) -> None: ...


class UnmergeableAdapter(FakeAdapter):
    unmerge = None  # type: ignore[assignment]


class FakePretrained:
    def save_pretrained(self, path: Any, /, *, state_dict: Any = None) -> Path:
        return Path(path)

    def load_weights(self, path: Any, /) -> None: ...


class FakeHFNamed:
    def hf_parameter_name(self, name: str, /) -> tuple[str, bool]:
        return "model." + name, False


class SaveOnly:
    def save_pretrained(self, path: Any, /, *, state_dict: Any = None) -> Path:
        return Path(path)


CASES: list[tuple[type, object, object]] = [
    (Tokenizer, FakeTokenizer(), NoDecode()),
    (TrainableTokenizer, FakeTrainableTokenizer(), FakeTokenizer()),
    (Norm, Module(), CallOnly()),
    (FeedForward, Module(), CallOnly()),
    (PositionalEncoding, Module(), CallOnly()),
    (Attention, Module(), CallOnly()),
    (LayerKVCache, FakeLayerCache(), FakeCache()),
    (KVCache, FakeCache(), CacheWithoutReorder()),
    (KVCache, FakeCache(), CacheWithoutRowCopies()),
    (CausalLM, FakeLM(), Module()),
    (CachedCausalLM, FakeCachedLM(), FakeLM()),
    (ModelConfigLike, ModelConfig(vocab_size=3, context_length=2), FakeState()),
    (LogitsProcessor, CallOnly(), object()),
    (Checkpointable, Stateful(), FakeTokenizer()),
    (BatchSource, FakeBatches(), Stateful()),
    (TrainerState, FakeState(), Stateful()),
    (Adapter, FakeAdapter(), UnmergeableAdapter()),
    (PretrainedModel, FakePretrained(), SaveOnly()),
    (HFNamedModel, FakeHFNamed(), FakePretrained()),
]


@pytest.mark.parametrize(("contract", "good", "bad"), CASES, ids=[c[0].__name__ for c in CASES])
def test_conforming_and_non_conforming_are_told_apart(
    contract: type, good: object, bad: object
) -> None:
    assert isinstance(good, contract)
    assert not isinstance(bad, contract)


def test_every_public_contract_is_covered() -> None:
    import lego.protocols as p

    contracts = {
        name
        for name in p.__all__
        if getattr(getattr(p, name), "_is_protocol", False)
        and getattr(getattr(p, name), "_is_runtime_protocol", False)
    }
    assert contracts == {case[0].__name__ for case in CASES}


def test_trainer_callback_hooks_are_optional() -> None:
    calls: list[int] = []

    class StopEarly(TrainerCallback):
        def on_step_end(self, state: TrainerState) -> None:
            calls.append(state.step)
            state.should_stop = state.step >= 1

    callback = StopEarly()
    state = FakeState()
    callback.on_train_begin(state)
    callback.on_step_end(state)
    callback.on_evaluate(state, {"val_loss": 2.0})
    callback.on_save(state, Path("ckpt"))
    callback.on_train_end(state)
    assert calls == [1]
    assert state.should_stop is True


def test_real_torch_like_signatures_type_check() -> None:
    # Static conformance is checked by mypy on the sources; here a runtime smoke check that
    # a ModelConfig satisfies the config contract CausalLM.config promises.
    lm: CausalLM = FakeLM()
    assert lm.config.vocab_size == 10
    assert lm.config.to_dict() == {"vocab_size": 10, "context_length": 4}
