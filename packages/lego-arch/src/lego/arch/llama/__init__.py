"""Llama 3: RoPE with llama3 scaling, RMSNorm, grouped-query attention, SwiGLU, no biases.

See [`lego.arch.llama.presets`][lego.arch.llama.presets] for what sets the family apart and
the named sizes.
"""

from lego.arch.llama.presets import PRESETS, llama3_config, llama3_rope_scaling

__all__ = ["PRESETS", "llama3_config", "llama3_rope_scaling"]
