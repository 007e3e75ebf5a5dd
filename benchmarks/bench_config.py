"""Validated configs: LegoLLM's ``ModelConfig`` against pydantic v2's ``BaseModel``.

Both sides build the same GPT-2-style config from the same plain dictionary, with the same
rules: strict scalar types (``int`` refuses ``True`` and ``"12"``, ``float`` accepts an
``int``), a ``Literal`` norm, lists accepted for the ``tuple[str, ...]`` field, positive
sizes, ``n_embd % n_head == 0``, frozen instances, unknown keys refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Strict, ValidationError, model_validator

from benchmarks._harness import (
    BenchResult,
    Row,
    autonumber,
    compare,
    log,
    package_version,
    per_second,
)
from lego.protocols import ConfigError, ModelConfig, __version__

PEER = f"pydantic {package_version('pydantic')}"
OURS = f"lego-protocols {__version__}"


# --- LegoLLM -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LegoGPTConfig(ModelConfig):
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope_theta: float | None = None
    layer_types: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()  # vocab_size and context_length at least 1
        if self.n_embd % self.n_head:
            raise ConfigError("n_embd must be divisible by n_head", key="n_embd")


# --- pydantic: the same fields and rules -------------------------------------------------

StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # strict float still accepts an int, like ours
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]


class PydanticGPTConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: StrictInt
    context_length: StrictInt
    n_layer: StrictInt = 12
    n_head: StrictInt = 12
    n_embd: StrictInt = 768
    dropout: StrictFloat = 0.0
    bias: StrictBool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope_theta: StrictFloat | None = None
    layer_types: tuple[StrictStr, ...] = ()  # lax container: a JSON list is accepted

    @model_validator(mode="after")
    def _check(self) -> PydanticGPTConfig:
        for name in ("vocab_size", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head")
        return self


# --- the input -----------------------------------------------------------------------------

GPT2_SMALL: dict[str, Any] = {  # as it comes out of json.load: lists, not tuples
    "vocab_size": 50257,
    "context_length": 1024,
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "dropout": 0.1,
    "bias": True,
    "norm": "layernorm",
    "rope_theta": None,
    "layer_types": ["attention"] * 12,
}
TYPO = {**GPT2_SMALL, "n_layr": 12}  # an unknown key, one letter off a valid one


def _check_same() -> list[str]:
    """Check that both sides accept, normalize and refuse alike; return the two messages."""
    ours, theirs = LegoGPTConfig.from_dict(GPT2_SMALL), PydanticGPTConfig.model_validate(GPT2_SMALL)
    if ours.to_dict() != theirs.model_dump(mode="json"):
        raise RuntimeError("the two configs disagree on the same input")
    if ours.layer_types != theirs.layer_types or type(ours.dropout) is not type(theirs.dropout):
        raise RuntimeError("the two configs normalize differently")
    messages = []
    for build, error in (
        (LegoGPTConfig.from_dict, ConfigError),
        (PydanticGPTConfig.model_validate, ValidationError),
    ):
        for bad in (TYPO, {**GPT2_SMALL, "n_head": 10}, {**GPT2_SMALL, "n_layer": True}):
            try:
                build(bad)
            except error as err:
                if bad is TYPO:
                    messages.append(" ".join(str(err).split()))
            else:
                raise RuntimeError(f"{build.__qualname__} accepted {bad}")
    return messages


def _typo_lego() -> None:
    with contextlib.suppress(ConfigError):
        LegoGPTConfig.from_dict(TYPO)


def _typo_pydantic() -> None:
    with contextlib.suppress(ValidationError):
        PydanticGPTConfig.model_validate(TYPO)


def run(quick: bool) -> BenchResult:
    repeat = 3 if quick else 9
    min_time = 0.02 if quick else 0.2
    lego_cfg = LegoGPTConfig.from_dict(GPT2_SMALL)
    pyd_cfg = PydanticGPTConfig.model_validate(GPT2_SMALL)
    cases = [
        (
            "dict -> validated config",
            lambda: LegoGPTConfig.from_dict(GPT2_SMALL),
            lambda: PydanticGPTConfig.model_validate(GPT2_SMALL),
            "from_dict vs model_validate",
        ),
        (
            "config -> dict",
            lego_cfg.to_dict,
            lambda: pyd_cfg.model_dump(mode="json"),
            "to_dict vs model_dump(mode='json'): both give lists for tuples",
        ),
        (
            "unknown key -> error",
            _typo_lego,
            _typo_pydantic,
            "raise and catch ConfigError vs ValidationError",
        ),
    ]
    messages = _check_same()
    rows: list[Row] = []
    numbers: dict[str, int] = {}
    for what, ours, peer, note in cases:
        log(f"  {what} ...")
        number = autonumber(ours, min_time=min_time)
        numbers[what] = number
        t_ours, t_peer = compare(ours, peer, repeat=repeat, number=number)
        rows.append(
            Row(
                what=what,
                ours=per_second(t_ours),
                peer=PEER,
                peer_value=per_second(t_peer),
                unit="ops/s",
                note=note,
            )
        )
    return BenchResult(
        name="config",
        title=f"Validated configs: {OURS} vs {PEER}",
        description=(
            "A GPT-2-small config (10 keys, as `json.load` returns them) built, serialized "
            "and refused by `lego.protocols.ModelConfig` (a frozen dataclass checked in pure "
            "Python) and by a frozen pydantic v2 `BaseModel` with the same fields and rules "
            "(strict scalars, `extra='forbid'`, an after-validator for n_embd % n_head)."
        ),
        rows=rows,
        params={"repeat": repeat, "calls_per_timing": numbers},
        notes=[
            "Both sides get the same input object and must give equal results (checked "
            "before timing); higher ops/s is better.",
            f"LegoLLM's unknown-key error: {messages[0]!r}",
            f"pydantic's unknown-key error: {messages[1]!r}",
            "LegoLLM has no compiled core and no dependencies; pydantic validates in Rust "
            "(pydantic-core).",
        ],
    )
