"""lego-serve: an OpenAI-compatible HTTP server with continuous batching, for any causal LM.

With ``model`` a lego-arch model (any ``lego.protocols.CachedCausalLM``) and ``tokenizer``
its tokenizer::

    import uvicorn
    from lego.serve import Engine, create_app

    engine = Engine(model=model, tokenizer=tokenizer, eos_token_ids=[eos_id])
    engine.start()
    app = create_app(engine, model_name="my-model", chat_template="chatml")
    uvicorn.run(app, host="127.0.0.1", port=8000)
    engine.close()

- The engine: [`Engine`][lego.serve.engine.Engine] (one decode loop, continuous batching),
  [`SamplingParams`][lego.serve.engine.SamplingParams], the events a request yields
  ([`TokenOutput`][lego.serve.engine.TokenOutput],
  [`PromptLogprobs`][lego.serve.engine.PromptLogprobs],
  [`Finish`][lego.serve.engine.Finish]) and [`EngineFull`][lego.serve.engine.EngineFull].
- The HTTP layer: [`create_app()`][lego.serve.app.create_app] (the routes);
  [`APIError`][lego.serve.errors.APIError] (OpenAI's error shape); request parsing in
  ``lego.serve.protocol``, responses in ``lego.serve.responses``, server-sent events in
  ``lego.serve.sse``, the API key in ``lego.serve.auth``.
"""

from lego.serve.__about__ import __version__
from lego.serve.app import create_app
from lego.serve.engine import (
    Engine,
    EngineFull,
    Finish,
    PromptLogprobs,
    Request,
    SamplingParams,
    TokenOutput,
)
from lego.serve.errors import APIError

__all__ = [
    "__version__",
    # HTTP
    "create_app",
    "APIError",
    # engine
    "Engine",
    "Request",
    "SamplingParams",
    "PromptLogprobs",
    "TokenOutput",
    "Finish",
    "EngineFull",
]
