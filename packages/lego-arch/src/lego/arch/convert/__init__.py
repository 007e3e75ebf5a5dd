"""The toolkit a family uses to describe its conversion to and from transformers.

- [`lego.arch.convert.mapping`][lego.arch.convert.mapping]: the rule engine between HF tensor
  names and lego state-dict keys ([`WeightRule`][lego.arch.convert.mapping.WeightRule],
  [`WeightTable`][lego.arch.convert.mapping.WeightTable],
  [`TensorPlan`][lego.arch.convert.mapping.TensorPlan]);
- [`lego.arch.convert.fields`][lego.arch.convert.fields]: typed reads of ``config.json``
  fields, with a [`CompatibilityError`][lego.protocols.CompatibilityError] naming the key.

It imports neither the families nor the model: the families
([`lego.arch.gpt2.hf`][lego.arch.gpt2.hf], ...) are written with it, and
[`lego.arch.hf`][lego.arch.hf] reads and writes directories with the families' tables.
"""

from lego.arch.convert.mapping import (
    TensorPlan,
    Transform,
    WeightRule,
    WeightTable,
    identity,
    transpose,
)

__all__ = ["TensorPlan", "Transform", "WeightRule", "WeightTable", "identity", "transpose"]
