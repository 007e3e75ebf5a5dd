"""GPT-2: learned positions, LayerNorm, fused-QKV multi-head attention, GELU MLP, tied head.

See [`lego.arch.gpt2.presets`][lego.arch.gpt2.presets] for what sets the family apart and
the named sizes.
"""

from lego.arch.gpt2.presets import PRESETS, gpt2_config

__all__ = ["PRESETS", "gpt2_config"]
