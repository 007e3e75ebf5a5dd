"""Qwen 3: Llama 3's bricks plus QK-norm and a free head_dim; dense and mixture of experts.

See [`lego.arch.qwen3.presets`][lego.arch.qwen3.presets] for what sets the family apart and
the named sizes.
"""

from lego.arch.qwen3.presets import PRESETS, qwen3_config

__all__ = ["PRESETS", "qwen3_config"]
