"""Configs as data: define, build, validate, save, load and change a model config.

A LegoLLM config is a frozen, keyword-only dataclass. Every field is checked against its
annotation when the config is built, ``validate()`` adds rules across fields, and the
config round-trips through JSON. Unknown keys are errors that suggest the closest key.

    python examples/config_as_data.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lego.protocols import ConfigError, ModelConfig


@dataclass(frozen=True, kw_only=True)
class TinyGPTConfig(ModelConfig):
    """A GPT-style model family: ``vocab_size`` and ``context_length`` come from the base."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    rope_theta: float | None = None
    layer_types: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()  # the base checks vocab_size and context_length
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd must be divisible by n_head ({self.n_embd} % {self.n_head} != 0)",
                key="n_head",
                hint="choose n_head among the divisors of n_embd",
            )
        if self.layer_types and len(self.layer_types) != self.n_layer:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries for {self.n_layer} layers",
                key="layer_types",
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="accepted for the test; no-op")
    parser.parse_args(argv)

    # 1. Build from plain data, e.g. what json.load or yaml.safe_load returned. The list
    #    becomes a tuple and the int dropout a float, because of the annotations.
    data = {
        "vocab_size": 50257,
        "context_length": 256,
        "n_layer": 2,
        "dropout": 0,
        "norm": "rmsnorm",
        "rope_theta": 10000,
        "layer_types": ["attention", "attention"],
    }
    config = TinyGPTConfig.from_dict(data)
    print(f"built:    {config}")

    # 2. Round-trip through a JSON file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        config.to_json(path)
        print(f"saved:    {path.name}, {len(path.read_text(encoding='utf-8'))} bytes")
        loaded = TinyGPTConfig.from_json(path)
    assert loaded == config
    print(f"loaded:   equal to the original: {loaded == config}")

    # 3. Configs are frozen; replace() returns a validated copy.
    bigger = config.replace(n_layer=4, layer_types=["attention"] * 4, n_embd=256)
    print(f"replaced: n_layer={bigger.n_layer}, n_embd={bigger.n_embd} (was {config.n_embd})")

    # 4. Bad configs are ConfigErrors that say what, where and what to do.
    bad_inputs = {
        "a misspelled key": {**data, "n_heads": 4},
        "a rule of validate()": {**data, "n_head": 5},
        "a wrong type": {**data, "n_layer": "2"},
        "a wrong literal": {**data, "norm": "rms_norm"},
    }
    for label, bad in bad_inputs.items():
        try:
            TinyGPTConfig.from_dict(bad, path="config.json")
        except ConfigError as err:  # str(err) has what, where and what to do
            print(f"\n{label}:\n  ConfigError: " + str(err).replace("\n", "\n  "))
            print(f"  (as data: key={err.key!r}, hint={err.hint!r})")
    try:
        config.replace(n_embed=512)
    except ConfigError as err:
        print(f"\nreplace(n_embed=...): {err.message}; {err.hint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
