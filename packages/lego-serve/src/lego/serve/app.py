"""The OpenAI-compatible HTTP application (Starlette): routes and what each one does.

[`create_app()`][lego.serve.app.create_app] wraps a running
[`Engine`][lego.serve.engine.Engine] in a Starlette application; run it with uvicorn::

    engine = Engine(model=model, tokenizer=tokenizer, eos_token_ids=[eos_id])
    engine.start()
    app = create_app(engine, model_name="my-model", chat_template="chatml")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes:

- ``GET /``: the web chat page ([`lego.serve.page`][lego.serve.page]; never needs the key:
  the page asks for it and sends it with its API calls);
- ``GET /health``: ``{"status": "ok"}`` and the engine's counters (never needs the key);
- ``GET /v1/models``, ``GET /v1/models/{id}``: the served model;
- ``POST /v1/chat/completions``: messages rendered with the chat template;
- ``POST /v1/completions``: text or token-id prompts, ``echo``, legacy ``logprobs``;
- ``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``: vLLM's tokenizer
  endpoints, as lm-evaluation-harness's ``tokenizer_backend=remote`` calls them.

Both generation routes stream server-sent events with ``"stream": true``. Each HTTP request
becomes one engine request per choice ([`Job`][lego.serve.jobs.Job]); they are cancelled
as soon as the client disconnects (streamed or not), when the request's time limit passes
(the response then ends as it stands, ``finish_reason: "length"``), or on an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lego.protocols import CompatibilityError, ConfigError, LegoError
from lego.protocols.chat import ChatTemplate, get_chat_template, special_token_id
from lego.serve import sse
from lego.serve.auth import APIKeyMiddleware, check_api_key
from lego.serve.engine import Engine, Finish, PromptLogprobs, TokenOutput
from lego.serve.errors import SERVER_ERROR, APIError, bad_request, error_body, error_response
from lego.serve.jobs import Job
from lego.serve.page import chat_page
from lego.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    ServedModel,
    check_model,
    parse_chat,
    parse_completion,
    parse_messages,
    read_json,
)
from lego.serve.responses import (
    Choice,
    chat_logprobs,
    check_finished,
    finish_reason,
    legacy_logprobs,
    new_id,
    now,
    usage,
)
from lego.serve.tokens import decode_all, encode_prompt, token_text

__all__ = ["create_app", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_TIMEOUT_S"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""The default request size limit (4 MiB: a full 128k-token context as JSON fits)."""

DEFAULT_TIMEOUT_S: Final = 600.0
"""The default time limit of one request, queueing included (10 minutes)."""

JSON = dict[str, Any]
Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    engine: Engine,
    *,
    model_name: str,
    chat_template: str | ChatTemplate | None = None,
    eos_token: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cors_origins: Sequence[str] = (),
    request_timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Starlette:
    """Build the OpenAI-compatible application around an engine.

    The engine's tokenizer encodes prompts and decodes tokens, and its ``max_seq_len``
    bounds each request's prompt plus ``max_tokens``. The caller starts the engine before
    serving and closes it after.

    Args:
        engine: The serving engine (started or not yet).
        model_name: The model id clients send as ``model``; requests for another id get
            404 ``model_not_found``.
        chat_template: The chat template's name (``"chatml"``, ``"llama3"``) or object;
            None serves completions only (chat requests get 400). Chat requests stop on
            its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) besides the engine's
            EOS ids.
        eos_token: The end-of-text special token's string for ``/tokenizer_info``; None
            takes the first of the engine's ``eos_token_ids`` that is a special token.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer
            <api_key>`` (compared in constant time), else 401.
        max_body_bytes: Request bodies above this size get 413.
        cors_origins: Origins allowed to call the API from a browser (CORS); empty (the
            default) sends no CORS headers, so browsers refuse cross-origin calls.
        request_timeout_s: Seconds one request may take, queueing included; then its
            engine requests are cancelled and the response ends with what was generated
            (``finish_reason: "length"``). None: no limit.

    Returns:
        The Starlette application.

    Raises:
        ConfigError: A bad setting (empty model name, key, limits; unknown template).
        CompatibilityError: The tokenizer lacks a special token the chat template or
            ``eos_token`` needs.
    """
    if not model_name:
        raise ConfigError("model_name must be a non-empty string", key="model_name")
    if api_key is not None:
        check_api_key(api_key)
    if max_body_bytes < 1:
        raise ConfigError(
            f"max_body_bytes must be a positive integer, got {max_body_bytes!r}",
            key="max_body_bytes",
        )
    if request_timeout_s is not None and not request_timeout_s > 0:
        raise ConfigError(
            f"request_timeout_s must be positive or None, got {request_timeout_s!r}",
            key="request_timeout_s",
        )
    tokenizer = engine.tokenizer
    template = None if chat_template is None else get_chat_template(chat_template)
    end_of_turn = None
    if template is not None:
        for token in template.special_tokens:
            special_token_id(tokenizer, token, needed_by=f"the {template.name} chat template")
        end_of_turn = special_token_id(tokenizer, template.end_of_turn)
    if eos_token is None:
        names = {i: name for name, i in tokenizer.special_tokens.items()}
        eos_token = next((names[i] for i in engine.eos_token_ids if i in names), None)
    elif eos_token not in tokenizer.special_tokens:
        raise CompatibilityError(
            f"eos_token {eos_token!r} is not one of the tokenizer's special tokens",
            key="eos_token",
            hint="name a special token of the tokenizer, or leave eos_token unset",
        )
    model = ServedModel(
        name=model_name,
        tokenizer=tokenizer,
        vocab_size=int(engine.vocab_size),
        context_length=int(engine.max_seq_len),
        chat_template=template,
        eos_token=eos_token,
        end_of_turn_id=end_of_turn,
    )
    server = _Server(engine, model, max_body_bytes=max_body_bytes, timeout_s=request_timeout_s)
    routes = [
        Route("/", server.endpoint(server.page), methods=["GET"]),
        Route("/health", server.endpoint(server.health), methods=["GET"]),
        Route("/v1/models", server.endpoint(server.models), methods=["GET"]),
        Route("/v1/models/{model:path}", server.endpoint(server.get_model), methods=["GET"]),
        Route("/v1/chat/completions", server.endpoint(server.chat), methods=["POST"]),
        Route("/v1/completions", server.endpoint(server.completions), methods=["POST"]),
        Route("/tokenize", server.endpoint(server.tokenize), methods=["POST"]),
        Route("/detokenize", server.endpoint(server.detokenize), methods=["POST"]),
        Route("/tokenizer_info", server.endpoint(server.tokenizer_info), methods=["GET"]),
    ]
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    if api_key is not None:
        middleware.append(Middleware(APIKeyMiddleware, api_key=api_key))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404 unknown route, 405 wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"there is no route {where}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"the method is not allowed: {where} (allowed: {allowed})"
    else:
        message = f"{exc.detail} ({where})"
    return error_response(exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug outside the routes: 500 without a traceback (the log has it)."""
    return JSONResponse(_internal_error(), status_code=500)


def _internal_error() -> dict[str, dict[str, object]]:
    return error_body(
        "the server failed on this request (the details are in its log)",
        type=SERVER_ERROR,
        code="internal_error",
    )


async def _wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Server:
    """The route handlers and what they share."""

    def __init__(
        self, engine: Engine, model: ServedModel, *, max_body_bytes: int, timeout_s: float | None
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.created = now()

    def endpoint(self, handler: Handler) -> Handler:
        """Turn every failure of ``handler`` into an OpenAI-shaped error response."""

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as err:
                return err.response()
            except LegoError as err:
                return bad_request(err.message, err.key).response()
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return JSONResponse(_internal_error(), status_code=500)

        return run

    # -- simple routes ------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """``GET /``: the web chat page ([`chat_page()`][lego.serve.page.chat_page])."""
        body, headers = chat_page()
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)

    async def health(self, request: Request) -> Response:
        """``GET /health``."""
        return JSONResponse({"status": "ok", **self.engine.stats()})

    def _model_card(self) -> JSON:
        return {
            "id": self.model.name,
            "object": "model",
            "created": self.created,
            "owned_by": "lego-serve",
            "max_model_len": self.model.context_length,
        }

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``."""
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``."""
        check_model({"model": request.path_params["model"]}, self.model, required=True)
        return JSONResponse(self._model_card())

    async def tokenize(self, request: Request) -> Response:
        """``POST /tokenize``: ``{prompt | messages}`` to ``{count, max_model_len, tokens}``.

        Lego tokenizers add no special tokens of their own, so ``add_special_tokens`` has
        nothing to add; the chat template adds its own.
        """
        body = await read_json(request, max_bytes=self.max_body_bytes)
        check_model(body, self.model, required=False)
        tokenizer = self.model.tokenizer
        if "messages" in body and body.get("prompt") is None:
            template = self.model.chat_template
            if template is None:
                raise bad_request(f"the model {self.model.name!r} has no chat template", "messages")
            generation = body.get("add_generation_prompt", True)
            if not isinstance(generation, bool):
                raise bad_request(
                    "add_generation_prompt must be true or false", "add_generation_prompt"
                )
            messages = parse_messages(body["messages"])
            ids = template.encode(tokenizer, messages, add_generation_prompt=generation)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise bad_request("the request needs 'prompt' (a string) or 'messages'", "prompt")
            ids = encode_prompt(tokenizer, prompt, splitter=self.model.splitter)
        out: JSON = {"count": len(ids), "max_model_len": self.model.context_length, "tokens": ids}
        if body.get("return_token_strs"):
            out["token_strs"] = [token_text(tokenizer, i) for i in ids]
        return JSONResponse(out)

    async def detokenize(self, request: Request) -> Response:
        """``POST /detokenize``: ``{tokens}`` to ``{prompt}``."""
        body = await read_json(request, max_bytes=self.max_body_bytes)
        check_model(body, self.model, required=False)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise bad_request("tokens must be an array of token ids", "tokens")
        bad = [t for t in tokens if not 0 <= t < self.model.vocab_size]
        if bad:
            raise bad_request(
                f"tokens holds {bad[0]}, outside the vocabulary (0..{self.model.vocab_size - 1})",
                "tokens",
            )
        return JSONResponse({"prompt": decode_all(self.model.tokenizer, tokens)})

    async def tokenizer_info(self, request: Request) -> Response:
        """``GET /tokenizer_info``: the tokenizer's settings, as vLLM reports them."""
        tokenizer = self.model.tokenizer
        template = self.model.chat_template
        return JSONResponse(
            {
                "tokenizer_class": type(tokenizer).__name__,
                "model_max_length": self.model.context_length,
                "vocab_size": int(tokenizer.vocab_size),
                "eos_token": self.model.eos_token,
                "bos_token": None,
                "pad_token": None,
                "added_tokens": dict(
                    sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
                ),
                "chat_template": None,
                "chat_template_name": None if template is None else template.name,
            }
        )

    # -- generation -----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        body = await read_json(request, max_bytes=self.max_body_bytes)
        req = parse_chat(body, self.model)
        prompts = [req.prompt_ids] * len(req.params)
        job = Job(self.engine, prompts, req.params, timeout_s=self.timeout_s)
        if req.stream:
            return _stream(self._chat_chunks(job, req), job)
        choices = [Choice(i, keep_tokens=req.logprobs) for i in range(len(req.params))]
        if not await self._collect(request, job, choices):
            return Response(status_code=499)
        out = []
        for choice in choices:
            assert choice.finish is not None
            check_finished(choice.finish)
            out.append(
                {
                    "index": choice.index,
                    "message": {"role": "assistant", "content": choice.completion},
                    "logprobs": chat_logprobs(self.model.tokenizer, choice.tokens)
                    if req.logprobs
                    else None,
                    "finish_reason": finish_reason(choice.finish),
                }
            )
        return JSONResponse(
            {
                "id": new_id("chatcmpl"),
                "object": "chat.completion",
                "created": now(),
                "model": self.model.name,
                "system_fingerprint": None,
                "choices": out,
                "usage": usage(len(req.prompt_ids), sum(c.completion_tokens for c in choices)),
            }
        )

    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``."""
        body = await read_json(request, max_bytes=self.max_body_bytes)
        req = parse_completion(body, self.model)
        prompt_tokens = sum(len(p) for p in req.prompts)
        prompts = [p for p in req.prompts for _ in range(req.n)]
        choices = [Choice(i, keep_tokens=req.logprobs is not None) for i in range(len(prompts))]
        if not req.params:  # max_tokens 0 and nothing to score: nothing for the engine
            for choice, prompt in zip(choices, prompts, strict=True):
                choice.finish = Finish("length", "", len(prompt), 0)
        else:
            job = Job(self.engine, prompts, req.params, timeout_s=self.timeout_s)
            if req.stream:
                return _stream(self._completion_chunks(job, req, choices, prompt_tokens), job)
            if not await self._collect(request, job, choices):
                return Response(status_code=499)
        if req.stream:
            return _stream(self._completion_chunks(None, req, choices, prompt_tokens), None)
        out = []
        for choice in choices:
            assert choice.finish is not None
            check_finished(choice.finish)
            prompt_text = req.prompt_texts[choice.index // req.n] if req.echo else ""
            logprobs = None
            if req.logprobs is not None:
                logprobs = legacy_logprobs(
                    self.model.tokenizer,
                    prompt=choice.prompt if req.echo else None,
                    tokens=choice.tokens,
                )
            out.append(
                {
                    "index": choice.index,
                    "text": prompt_text + choice.completion,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(choice.finish),
                }
            )
        return JSONResponse(
            {
                "id": new_id("cmpl"),
                "object": "text_completion",
                "created": now(),
                "model": self.model.name,
                "system_fingerprint": None,
                "choices": out,
                "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
            }
        )

    async def _collect(self, request: Request, job: Job, choices: list[Choice]) -> bool:
        """Receive every event of ``job``; False (all cancelled) when the client left."""

        async def consume() -> None:
            async for index, event in job.events():
                choices[index].add(event)

        consumer = asyncio.ensure_future(consume())
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not consumer.done():
                consumer.cancel()
                job.cancel()
        if consumer in done:
            consumer.result()  # re-raise its failure
            return True
        logger.info(
            "%s %s: the client disconnected; its requests were cancelled",
            request.method,
            request.url.path,
        )
        return False

    # -- streams --------------------------------------------------------------------------

    async def _chat_chunks(self, job: Job, req: ChatRequest) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed chat completion."""
        head = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": now(),
            "model": self.model.name,
            "system_fingerprint": None,
        }
        if req.include_usage:
            head["usage"] = None

        def chunk(
            index: int, delta: JSON, logprobs: JSON | None = None, reason: str | None = None
        ) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            return sse.event({**head, "choices": [choice]})

        tokenizer = self.model.tokenizer
        choices = [Choice(i) for i in range(len(req.params))]
        try:
            for i in range(len(choices)):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for index, event in job.events():
                text = choices[index].add(event)
                if isinstance(event, TokenOutput):
                    if text or req.logprobs:
                        logprobs = chat_logprobs(tokenizer, [event]) if req.logprobs else None
                        yield chunk(index, {"content": text}, logprobs)
                elif isinstance(event, Finish):
                    check_finished(event)
                    if text:
                        yield chunk(index, {"content": text})
                    yield chunk(index, {}, reason=finish_reason(event))
            if req.include_usage:
                completion = sum(c.completion_tokens for c in choices)
                yield sse.event(
                    {**head, "choices": [], "usage": usage(len(req.prompt_ids), completion)}
                )
            yield sse.DONE
        except Exception as err:  # the status line is sent: the error goes into the stream
            yield _stream_error(err)
            yield sse.DONE
        finally:
            job.cancel()

    async def _completion_chunks(
        self, job: Job | None, req: CompletionRequest, choices: list[Choice], prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed text completion."""
        head = {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": self.model.name,
            "system_fingerprint": None,
        }
        if req.include_usage:
            head["usage"] = None
        tokenizer = self.model.tokenizer
        offsets = [0] * len(choices)

        def chunk(
            index: int, text: str, logprobs: JSON | None = None, reason: str | None = None
        ) -> bytes:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
            return sse.event({**head, "choices": [choice]})

        def legacy(index: int, prompt: PromptLogprobs | None, tokens: list[TokenOutput]) -> JSON:
            out = legacy_logprobs(tokenizer, prompt=prompt, tokens=tokens, offset=offsets[index])
            offsets[index] += sum(len(t) for t in out["tokens"])
            return out

        try:
            if req.echo and req.logprobs is None:
                for choice in choices:
                    yield chunk(choice.index, req.prompt_texts[choice.index // req.n])
            if job is None:
                for choice in choices:
                    assert choice.finish is not None
                    yield chunk(choice.index, "", reason=finish_reason(choice.finish))
            else:
                async for index, event in job.events():
                    text = choices[index].add(event)
                    if isinstance(event, PromptLogprobs):
                        if req.echo:
                            prompt_text = req.prompt_texts[index // req.n]
                            yield chunk(index, prompt_text, legacy(index, event, []))
                    elif isinstance(event, TokenOutput):
                        if text or req.logprobs is not None:
                            logprobs = (
                                None if req.logprobs is None else legacy(index, None, [event])
                            )
                            yield chunk(index, text, logprobs)
                    else:
                        check_finished(event)
                        yield chunk(index, text, reason=finish_reason(event))
            if req.include_usage:
                completion = sum(c.completion_tokens for c in choices)
                yield sse.event({**head, "choices": [], "usage": usage(prompt_tokens, completion)})
            yield sse.DONE
        except Exception as err:  # the status line is sent: the error goes into the stream
            yield _stream_error(err)
            yield sse.DONE
        finally:
            if job is not None:
                job.cancel()


def _stream(chunks: AsyncIterator[bytes], job: Job | None) -> StreamingResponse:
    """A server-sent event response; ``job`` is cancelled once it ends, however it ends.

    The stream's own ``finally`` cancels the job too, but a client that leaves before the
    first chunk stops the response before the stream ever starts: the background task
    still runs then.
    """
    background = None if job is None else BackgroundTask(job.cancel)
    return StreamingResponse(
        chunks, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS, background=background
    )


def _stream_error(err: Exception) -> bytes:
    """An error event inside a stream: OpenAI's error body (``openai`` raises it)."""
    if isinstance(err, APIError):
        return sse.event(err.body())
    logger.error("a streamed response failed", exc_info=err)
    return sse.event(_internal_error())
