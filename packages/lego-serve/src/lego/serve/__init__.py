"""lego-serve: an OpenAI-compatible HTTP server with continuous batching, for any causal LM.

The package is being built (issue 21): the serving engine (``lego.serve.engine``) and the
HTTP layer on Starlette + uvicorn land in the next commits.
"""

from lego.serve.__about__ import __version__

__all__ = ["__version__"]
