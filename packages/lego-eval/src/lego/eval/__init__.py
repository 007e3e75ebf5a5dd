"""lego-eval: measure any causal LM the way the field does.

The package is being built (issue 22): exact sliding-window perplexity and bits per byte
(``lego.eval.perplexity``), CORE-style task scoring (``lego.eval.core``) and an
lm-evaluation-harness model (``lego.eval.harness``, with the ``harness`` extra) land in the
next commits.
"""

from lego.eval.__about__ import __version__

__all__ = ["__version__"]
