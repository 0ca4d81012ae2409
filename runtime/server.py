"""An OpenAI-compatible HTTP server over one loaded bundle (`tandem serve`).

    POST /v1/completions         text (or token ids) in, text out; `stream: true` for server-sent events
    POST /v1/chat/completions    messages rendered with the bundle's chat template
    GET  /v1/models              the one model this server holds
    GET  /health                 liveness and load: {"status", "active", "queued", ...} (no API key needed)

One `TandemModel` serves every request; each request gets its own C++ generator, stepped in a
worker thread (the bindings release the GIL while C++ runs), so the event loop keeps accepting
and streaming. At most `max_concurrent` generations run at once; up to `queue_size` more wait
for a slot in arrival order, and a request beyond that is answered 429 at once. A client that
disconnects (mid-stream, or while its non-streamed request runs or waits) cancels its
generation: its worker stops stepping after the step in progress, the generator is freed and
the slot goes to the next request.

Every error is an OpenAI-style JSON body `{"error": {"message", "type", "param", "code"}}`:
bad input is a 4xx (malformed JSON or UTF-8, unknown fields, wrong types, values out of range,
a prompt that fills the context, chat on a bundle without a template), never a 5xx.

Needs the `serve` extra (Starlette on uvicorn): pip install 'tandem-runtime[serve]'.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.errors import (
    BundleError,
    BusyError,
    DeviceUnavailableError,
    InvalidArgumentError,
    MissingDependencyError,
    RuntimeBackendError,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from tandem.runtime.api import TandemModel

log = logging.getLogger("tandem.server")

INSTALL_HINT = "pip install 'tandem-runtime[serve]'"
DEFAULT_PORT = 8000
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_SEED = 2**64 - 1
_INT32_MAX = 2**31 - 1
INLINE_PREPARE_BYTES = 4 * 1024


def require_serve_dependencies() -> tuple[Any, Any]:
    """The `starlette` and `uvicorn` modules, or MissingDependencyError naming the extra."""
    try:
        import starlette
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            f"`tandem serve` needs Starlette and uvicorn ({exc.name or exc} is not installed): "
            f"{INSTALL_HINT}") from exc
    return starlette, uvicorn


# --------------------------------------------------------------------------- settings


@dataclass
class ServerConfig:
    """What a server accepts; the defaults of `tandem serve`."""

    model_id: str = "tandem"            # the name clients pass as `model` and /v1/models lists
    api_key: str | None = None          # when set, every request but GET /health needs `Authorization: Bearer KEY`
    max_concurrent: int = 2             # generations running at once
    queue_size: int = 16                # requests waiting for a slot; beyond that: 429
    default_mode: str | None = None     # mode of requests that name none (None: speed if the bundle has it)
    default_block_length: int | str | None = None  # γ of requests that name none (None: the bundle's)
    default_max_tokens: int = 256       # max_tokens of requests that name none (then clamped to the context)
    max_body_bytes: int = 4 * 2**20     # larger request bodies: 413

    def check(self, model: TandemModel) -> None:
        """Refuses settings the server cannot run with, naming the option to fix."""
        if not self.model_id or not self.model_id.strip():
            raise InvalidArgumentError("the model id must be a non-empty name (--model-id)")
        if self.api_key is not None and not self.api_key:
            raise InvalidArgumentError("the API key is empty: pass a non-empty --api-key / TANDEM_API_KEY, "
                                       "or none to serve without a key")
        if not 1 <= self.max_concurrent <= 1024:
            raise InvalidArgumentError(f"max concurrent generations must be in [1, 1024], got {self.max_concurrent} "
                                       "(--max-concurrent)")
        if not 0 <= self.queue_size <= 1_000_000:
            raise InvalidArgumentError(f"the queue size must be in [0, 1000000], got {self.queue_size} (--queue-size)")
        if not 1 <= self.default_max_tokens <= _INT32_MAX:
            raise InvalidArgumentError(f"the default max_tokens must be >= 1, got {self.default_max_tokens} "
                                       "(--max-tokens)")
        if self.max_body_bytes < 1024:
            raise InvalidArgumentError(f"the body limit must be at least 1024 bytes, got {self.max_body_bytes} "
                                       "(--max-body-bytes)")
        if self.default_mode is not None and self.default_mode not in model.modes:
            raise InvalidArgumentError(f"--mode {self.default_mode!r} is not a mode of this bundle: "
                                       f"use one of {', '.join(model.modes)}")
        block = self.default_block_length
        if block is not None and block != "auto" and not (
                isinstance(block, int) and 1 <= block <= model.manifest.max_block_length):
            raise InvalidArgumentError(f"--block-length must be 'auto' or an integer in "
                                       f"[1, {model.manifest.max_block_length}], got {block!r}")


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """An HTTP error answered with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error_from(exc: BaseException, phase: str) -> APIError:
    """The HTTP error for an exception of tandem (or any other) while preparing ("prepare") or
    running ("run") a generation. A BundleError while preparing means the bundle cannot do what
    was asked (chat without a template, text without a tokenizer): 400. Anything unexpected is
    a 500 and is logged with its traceback."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidArgumentError):
        return APIError(400, str(exc))
    if isinstance(exc, BundleError) and phase == "prepare":
        return APIError(400, str(exc), code="unsupported_by_model")
    if isinstance(exc, DeviceUnavailableError):
        return APIError(503, str(exc), type="server_error", code="device_unavailable")
    if isinstance(exc, BusyError | RuntimeBackendError | BundleError):
        log.error("generation failed: %s", exc)
        return APIError(500, f"the generation failed: {exc}", type="server_error")
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return APIError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                    type="server_error")


# --------------------------------------------------------------------------- request schema


@dataclass
class GenerationRequest:
    """A validated /v1/completions or /v1/chat/completions request."""

    chat: bool
    prompt: str | list[int] | None = None          # completions
    messages: list[dict[str, Any]] | None = None   # chat
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    mode: str | None = None
    block_length: int | str | None = None
    ignore_eos: bool = False
    model: str | None = None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Fields:
    """Typed, strict reads of a JSON object's fields; `done()` refuses whatever was not read."""

    def __init__(self, body: dict[str, Any], where: str = "") -> None:
        self.body = dict(body)
        self.where = where
        self.known: list[str] = []

    def _param(self, name: str) -> str:
        return f"{self.where}{name}"

    def take(self, name: str) -> Any:
        """The raw value (None when absent or null)."""
        self.known.append(name)
        return self.body.pop(name, None)

    def bad(self, name: str, expected: str, value: Any) -> APIError:
        shown = json.dumps(value) if value is None or isinstance(value, bool | int | float) else ""
        if isinstance(value, str):
            shown = f"the string {json.dumps(value)}" if len(value) < 40 else "a string"
        return APIError(400, f"'{self._param(name)}' must be {expected}, got {shown or _json_type(value)}",
                        param=self._param(name))

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.take(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, f"an integer in [{low}, {high}]", value)
        if not low <= value <= high:
            raise self.bad(name, f"an integer in [{low}, {high}]", value)
        return value

    def number(self, name: str, low: float, high: float, low_open: bool = False) -> float | None:
        value = self.take(name)
        if value is None:
            return None
        rng = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(name, f"a number in {rng}", value)
        value = float(value)
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise self.bad(name, f"a number in {rng}", value)
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.take(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.bad(name, "true or false", value)
        return value

    def string(self, name: str) -> str | None:
        value = self.take(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.bad(name, "a string", value)
        return value

    def neutral(self, name: str, allowed: tuple[Any, ...], what: str) -> None:
        """An OpenAI field this server does not implement: only its neutral values pass."""
        value = self.take(name)
        if value is None or any(value == a and type(value) is type(a) for a in allowed):
            return
        raise APIError(400, f"'{self._param(name)}' is not supported by this server ({what}); "
                       f"omit it or pass {' or '.join(json.dumps(a) for a in allowed)}", param=self._param(name))

    def done(self, supported_hint: str) -> None:
        if self.body:
            name = sorted(self.body)[0]
            raise APIError(400, f"unknown field '{self._param(name)}': {supported_hint}",
                           param=self._param(name), code="unknown_field")


def _read_common(f: _Fields, req: GenerationRequest, max_block_length: int) -> None:
    req.model = f.string("model")
    temperature = f.number("temperature", 0.0, 2.0)
    req.temperature = 1.0 if temperature is None else temperature
    top_p = f.number("top_p", 0.0, 1.0, low_open=True)
    req.top_p = 1.0 if top_p is None else top_p
    n = f.take("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise APIError(400, f"'n' must be 1: this server generates one choice per request (got {json.dumps(n)}); "
                       "send several requests instead", param="n")
    req.stream = bool(f.boolean("stream"))
    options = f.take("stream_options")
    if options is not None:
        if not req.stream:
            raise APIError(400, "'stream_options' is only allowed with 'stream': true", param="stream_options")
        if not isinstance(options, dict):
            raise f.bad("stream_options", 'an object such as {"include_usage": true}', options)
        sub = _Fields(options, "stream_options.")
        req.include_usage = bool(sub.boolean("include_usage"))
        sub.done("stream_options supports only 'include_usage'")
    stop = f.take("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise f.bad("stop", "a string or an array of strings", stop)
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise APIError(400, f"'stop' takes at most {MAX_STOP_STRINGS} non-empty strings, got {len(stops)}"
                           + (" (one is empty)" if any(not s for s in stops) else ""), param="stop")
        req.stop = stops
    req.seed = f.integer("seed", 0, MAX_SEED)
    f.neutral("presence_penalty", (0, 0.0), "no repetition penalties")
    f.neutral("frequency_penalty", (0, 0.0), "no repetition penalties")
    f.neutral("logit_bias", ({},), "no logit bias")
    f.string("user")  # accepted and ignored, as an end-user id
    # tandem's extensions
    req.top_k = f.integer("top_k", 0, _INT32_MAX) or 0
    req.ignore_eos = bool(f.boolean("ignore_eos"))
    req.mode = f.string("mode")
    block = f.take("block_length")
    if block is not None:
        if block != "auto" and (isinstance(block, bool) or not isinstance(block, int)
                                or not 1 <= block <= max_block_length):
            raise f.bad("block_length", f"\"auto\" or an integer in [1, {max_block_length}]", block)
        req.block_length = block


COMPLETION_FIELDS = ("model, prompt, max_tokens, temperature, top_p, n (1), stream, stream_options, stop, seed, "
                     "user; tandem's: mode, block_length, top_k, ignore_eos")
CHAT_FIELDS = ("model, messages, max_tokens, max_completion_tokens, temperature, top_p, n (1), stream, "
               "stream_options, stop, seed, user; tandem's: mode, block_length, top_k, ignore_eos")


def parse_completion(body: dict[str, Any], context_length: int, max_block_length: int) -> GenerationRequest:
    """A /v1/completions body, validated (APIError 400 otherwise)."""
    f = _Fields(body)
    req = GenerationRequest(chat=False)
    if "prompt" not in body or body["prompt"] is None:
        raise APIError(400, "'prompt' is required: a string, or an array of token ids", param="prompt")
    prompt = f.take("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise APIError(400, "'prompt' is empty: give some text", param="prompt")
        req.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        req.prompt = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        raise APIError(400, f"'prompt' holds {len(prompt)} prompts: this server takes one prompt per request",
                       param="prompt")
    else:
        raise f.bad("prompt", "a non-empty string or a non-empty array of integer token ids", prompt)
    req.max_tokens = f.integer("max_tokens", 1, context_length)
    _read_common(f, req, max_block_length)
    f.neutral("echo", (False,), "no echo of the prompt")
    f.neutral("logprobs", (0,), "no log-probabilities")
    f.neutral("best_of", (1,), "one candidate per request")
    f.neutral("suffix", ("",), "no insertion")
    f.done(f"/v1/completions takes {COMPLETION_FIELDS}")
    return req


def _parse_message(i: int, message: Any) -> dict[str, Any]:
    where = f"messages[{i}]."
    if not isinstance(message, dict):
        raise APIError(400, f"'messages[{i}]' must be an object {{\"role\", \"content\"}}, got {_json_type(message)}",
                       param=f"messages[{i}]")
    f = _Fields(message, where)
    role = f.string("role")
    if not role:
        raise APIError(400, f"'{where}role' is required: \"system\", \"user\" or \"assistant\"", param=f"{where}role")
    content = f.take("content")
    if isinstance(content, list):  # content parts: only text
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) \
                    or set(part) != {"type", "text"}:
                raise APIError(400, f"'{where}content[{j}]' must be a text part {{\"type\": \"text\", \"text\": "
                               "\"...\"}: this server takes text only", param=f"{where}content")
            texts.append(part["text"])
        content = "\n".join(texts)
    if content is None:
        content = ""
        if role != "assistant":
            raise APIError(400, f"'{where}content' is required", param=f"{where}content")
    if not isinstance(content, str):
        raise f.bad("content", "a string or an array of text parts", content)
    out = {"role": "system" if role == "developer" else role, "content": content}
    name = f.string("name")
    if name is not None:
        out["name"] = name
    f.done("a message takes role, content and name")
    return out


def parse_chat(body: dict[str, Any], context_length: int, max_block_length: int) -> GenerationRequest:
    """A /v1/chat/completions body, validated (APIError 400 otherwise)."""
    f = _Fields(body)
    req = GenerationRequest(chat=True)
    messages = f.take("messages")
    if messages is None:
        raise APIError(400, "'messages' is required: an array such as [{\"role\": \"user\", \"content\": \"Hi\"}]",
                       param="messages")
    if not isinstance(messages, list) or not messages:
        raise f.bad("messages", "a non-empty array of messages", messages)
    req.messages = [_parse_message(i, m) for i, m in enumerate(messages)]
    max_tokens = f.integer("max_tokens", 1, context_length)
    max_completion = f.integer("max_completion_tokens", 1, context_length)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise APIError(400, "'max_tokens' and 'max_completion_tokens' disagree: pass one of them",
                       param="max_completion_tokens")
    req.max_tokens = max_completion if max_completion is not None else max_tokens
    _read_common(f, req, max_block_length)
    f.neutral("logprobs", (False,), "no log-probabilities")
    f.neutral("top_logprobs", (0,), "no log-probabilities")
    f.neutral("tools", ([],), "no tool calls")
    f.neutral("tool_choice", ("none",), "no tool calls")
    f.boolean("parallel_tool_calls")
    response_format = f.take("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(400, "'response_format' is not supported by this server (plain text only); omit it or pass "
                       '{"type": "text"}', param="response_format")
    f.done(f"/v1/chat/completions takes {CHAT_FIELDS}")
    return req


def _check_unicode(body: Any) -> None:
    """Refuses lone surrogates (JSON escapes such as \\ud800) anywhere in the body. Iterative: a
    deeply nested body must not exhaust the stack."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise APIError(400, f"'{where or 'body'}' is not valid Unicode text (a lone surrogate at index "
                               f"{exc.start}); send UTF-8 text", param=where or None) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, where or "body"))
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or APIError 400 saying what is wrong with it."""
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                       f"{exc.start}); send JSON encoded as UTF-8", code="invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(body)}", code="invalid_json")
    _check_unicode(body)
    return body


# --------------------------------------------------------------------------- admission


class QueueFullError(Exception):
    pass


class Admission:
    """At most `max_active` holders; up to `max_queued` waiters served in arrival order.

    Lives on the event loop's thread (no locks): `enter` returns a future that is done when
    the slot is granted, `release` hands a freed slot to the next waiter that still waits."""

    def __init__(self, max_active: int, max_queued: int) -> None:
        self.max_active, self.max_queued = max_active, max_queued
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self.waiters)  # only waiting futures: granted ones are popped, abandoned ones removed

    def enter(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.active < self.max_active and not self.queued:
            self.active += 1
            fut.set_result(None)
        elif self.queued >= self.max_queued:
            raise QueueFullError
        else:
            self.waiters.append(fut)
        return fut

    def leave_queue(self, fut: asyncio.Future[None]) -> None:
        """A waiter gives up; a slot already granted to it is released."""
        if fut.done() and not fut.cancelled():
            self.release()
        else:
            fut.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(fut)

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on: active stays
                return
        self.active -= 1


# --------------------------------------------------------------------------- one generation


class _Job:
    """One request's generation: a worker thread steps it and posts events to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()      # read by the worker between steps
        self.disconnected = asyncio.Event()  # the client went away
        self.finished = asyncio.Event()      # the worker is done and the slot released
        self.started_at = time.monotonic()

    def post(self, kind: str, value: Any = None) -> None:
        """From the worker thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def client_gone(self) -> None:
        """From the loop: stop the generation and wake whoever waits for its events."""
        if not self.disconnected.is_set():
            self.disconnected.set()
            self.cancel.set()
            self.events.put_nowait(("disconnected", None))


async def _wait_disconnect(receive: Callable[[], Any], job: _Job) -> None:
    """Reads the request's channel until the client disconnects, then cancels the job."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.client_gone()
            return


class _ClientGone(Exception):
    pass


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry on another instance or later", type="server_error",
                    code="shutting_down")


def _finish_reason(reason: str) -> str:
    return "length" if reason in ("max_new_tokens", "length") else "stop"


def _plain_stats(stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


@dataclass
class _Prepared:
    req: GenerationRequest
    prompt_ids: list[int]
    options: dict[str, Any]
    info: dict[str, Any]  # what the `tandem` object reports besides stats
    request_id: str
    created: int


class _EventStream:
    """The ASGI response of a streamed request: server-sent events from the job's queue.

    Watches the connection itself (independent of the ASGI server's spec version), so a client
    that goes away cancels the generation even while no token is being sent."""

    def __init__(self, server: TandemServer, job: _Job, prep: _Prepared) -> None:
        self.server, self.job, self.prep = server, job, prep

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        watcher = asyncio.create_task(_wait_disconnect(receive, self.job))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            async for data in self.server.sse_chunks(self.job, self.prep):
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we were writing
            self.job.client_gone()
        finally:
            self.job.cancel.set()  # a no-op when the generation has ended
            watcher.cancel()


# --------------------------------------------------------------------------- the server


class TandemServer:
    """The application state: one model, the admission queue, the worker threads, counters."""

    def __init__(self, model: TandemModel, config: ServerConfig | None = None) -> None:
        self.model = model
        self.config = config or ServerConfig()
        self.config.check(model)
        self.pool = ThreadPoolExecutor(max_workers=self.config.max_concurrent, thread_name_prefix="tandem-gen")
        self.admission = Admission(self.config.max_concurrent, self.config.queue_size)
        self.jobs: set[_Job] = set()
        self.counters = {"requests": 0, "completed": 0, "cancelled": 0, "rejected": 0, "failed": 0}
        self.started = int(time.time())

    # -- app ------------------------------------------------------------------------
    def app(self) -> Starlette:
        require_serve_dependencies()
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.middleware import Middleware
        from starlette.routing import Route

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            status = exc.status_code
            message = {404: f"no route {request.url.path}: this server has POST /v1/completions, "
                            "POST /v1/chat/completions, GET /v1/models, GET /health",
                       405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc.detail))
            return self.error_response(APIError(status, message, code={404: "not_found", 405: "method_not_allowed"}
                                                .get(status), headers=dict(exc.headers or {})))

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            yield
            self.shutdown()

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model_info, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        middleware = [Middleware(_AuthMiddleware, server=self)] if self.config.api_key else []
        return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error},
                         lifespan=lifespan)

    def shutdown(self) -> None:
        """Cancels every running generation and waits for the workers."""
        for job in list(self.jobs):
            job.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def error_response(self, err: APIError) -> Response:
        from starlette.responses import JSONResponse

        headers = dict(err.headers)
        if err.status == 401:
            headers.setdefault("www-authenticate", "Bearer")
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    # -- simple routes ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.config.model_id, "active": self.admission.active,
                "queued": self.admission.queued, "max_concurrent": self.config.max_concurrent,
                "queue_size": self.config.queue_size, **self.counters}

    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(self.status())

    def model_card(self) -> dict[str, Any]:
        m = self.model
        return {"id": self.config.model_id, "object": "model", "created": self.started, "owned_by": "tandem",
                "tandem": {"modes": m.modes, "context_length": m.context_length,
                           "default_block_length": m.manifest.default_block_length,
                           "max_block_length": m.manifest.max_block_length, "precision": m.manifest.precision,
                           "chat_template": m.chat_template is not None}}

    async def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model_info(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        name = request.path_params["model_id"]
        if name != self.config.model_id:
            return self.error_response(self._unknown_model(name, param=None))
        return JSONResponse(self.model_card())

    def _unknown_model(self, name: str, param: str | None = "model") -> APIError:
        return APIError(404, f"the model {name!r} does not exist: this server serves {self.config.model_id!r}",
                        param=param, code="model_not_found")

    # -- generation routes --------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._endpoint(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._endpoint(request, chat=True)

    async def _endpoint(self, request: Request, chat: bool) -> Response:
        from starlette.responses import Response

        self.counters["requests"] += 1
        try:
            return await self._generate(request, chat)
        except _ClientGone:
            self.counters["cancelled"] += 1
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, the server lives on
            err = api_error_from(exc, "prepare")
            self.counters["rejected" if err.status < 500 else "failed"] += 1
            return self.error_response(err)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise APIError(413, f"the request body has {length} bytes; this server takes at most {limit} "
                           "(--max-body-bytes)", code="body_too_large")
        from starlette.requests import ClientDisconnect

        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the request body is over {limit} bytes (--max-body-bytes)",
                                   code="body_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise _ClientGone from None
        return b"".join(chunks)

    def _prepare(self, req: GenerationRequest) -> _Prepared:
        """Prompt ids and generator options (runs in a thread: tokenizing and templates take time)."""
        model, cfg = self.model, self.config
        if req.chat:
            assert req.messages is not None
            if model.chat_template is None:
                raise APIError(400, f"the model {cfg.model_id!r} has no chat template, so it cannot take messages: "
                               "use /v1/completions with a prompt, or serve a bundle exported from a model folder "
                               "with a chat_template", param="messages", code="chat_template_missing")
            ids = list(model.apply_chat_template(req.messages, tokenize=True))
        elif isinstance(req.prompt, str):
            ids = model.encode(req.prompt)
        else:
            assert req.prompt is not None
            ids = list(req.prompt)
            bad = next((i for i in ids if not 0 <= i < model.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary [0, {model.vocab_size})",
                               param="prompt")
        param = "messages" if req.chat else "prompt"
        if not ids:
            raise APIError(400, "the prompt encodes to no tokens: give some text", param=param)
        context = model.context_length
        if len(ids) >= context:
            raise APIError(400, f"this model's context holds {context} tokens, and the prompt has {len(ids)}: "
                           "shorten it to leave room for the reply", param=param, code="context_length_exceeded")
        max_new = min(req.max_tokens or cfg.default_max_tokens, context - len(ids))
        mode = req.mode or cfg.default_mode or ("speed" if "speed" in model.modes else "large")
        if mode not in model.modes:
            raise APIError(400, f"'mode' {mode!r} is not available on this model: use one of {', '.join(model.modes)}",
                           param="mode")
        block = req.block_length if req.block_length is not None else cfg.default_block_length
        sample = req.temperature > 0
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        options = dict(mode=mode, block_length=block, max_new_tokens=max_new, do_sample=sample,
                       temperature=req.temperature if sample else 1.0, top_k=req.top_k if sample else 0,
                       top_p=req.top_p if sample else 1.0, seed=seed, stop=req.stop or None,
                       ignore_eos=req.ignore_eos)
        info = {"mode": mode, "block_length": block if block is not None else (
                    model.manifest.default_block_length if mode != "large" else None),
                "do_sample": sample, "seed": seed if sample else None, "max_tokens": max_new}
        prefix = "chatcmpl-" if req.chat else "cmpl-"
        return _Prepared(req, ids, options, info, prefix + secrets.token_hex(12), int(time.time()))

    async def _generate(self, request: Request, chat: bool) -> Response:
        from starlette.responses import JSONResponse

        raw = await self._read_body(request)
        body = parse_json_body(raw)
        model = self.model
        parse = parse_chat if chat else parse_completion
        req = parse(body, model.context_length, model.manifest.max_block_length)
        if req.model is not None and req.model != self.config.model_id:
            raise self._unknown_model(req.model)
        # a small request is tokenized (and its template rendered) on the loop: a thread hand-off
        # costs more than that; a large one in a thread, so that other streams are not held up
        prep = self._prepare(req) if len(raw) <= INLINE_PREPARE_BYTES else await asyncio.to_thread(self._prepare, req)

        job = _Job(asyncio.get_running_loop())
        watcher = asyncio.create_task(_wait_disconnect(request.receive, job))
        handed_off = False
        try:
            await self._admit(job)
            self.jobs.add(job)
            try:
                self.pool.submit(self._work, job, prep.prompt_ids, prep.options)
            except RuntimeError:  # the pool is shut down: the server is stopping
                self._release(job)
                raise _shutting_down() from None
            kind, value = await job.events.get()
            if kind == "error":
                raise api_error_from(value, "prepare")
            if kind == "disconnected":
                raise _ClientGone
            assert kind == "started", kind
            if kind == "cancelled":
                raise _shutting_down()
            if req.stream:
                watcher.cancel()  # the event stream watches the connection from here on
                handed_off = True
                return _EventStream(self, job, prep)  # type: ignore[return-value]
            pieces: list[str] = []
            while True:
                kind, value = await job.events.get()
                if kind == "piece":
                    pieces.append(value)
                elif kind == "done":
                    return JSONResponse(self._final_body(prep, value))
                elif kind == "disconnected":
                    raise _ClientGone
                elif kind == "cancelled":
                    raise _shutting_down()
                else:
                    raise api_error_from(value, "run")
        finally:
            watcher.cancel()
            if not handed_off:
                job.cancel.set()  # whatever ended this handler ends its generation (a no-op once done)

    async def _admit(self, job: _Job) -> None:
        try:
            slot = self.admission.enter()
        except QueueFullError:
            raise APIError(429, f"the server is busy: {self.config.max_concurrent} generations are running and "
                           f"{self.config.queue_size} requests are waiting; retry later", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"retry-after": "1"}) from None
        if slot.done():
            return
        gone = asyncio.create_task(job.disconnected.wait())
        try:
            await asyncio.wait({slot, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.admission.leave_queue(slot)
            raise
        finally:
            gone.cancel()
        if not slot.done():
            self.admission.leave_queue(slot)
            raise _ClientGone

    def _release(self, job: _Job) -> None:
        """On the loop, once the worker is done with the generator."""
        self.jobs.discard(job)
        self.admission.release()
        job.finished.set()

    def _work(self, job: _Job, prompt_ids: list[int], options: dict[str, Any]) -> None:
        """The worker thread: build the generator, step it until the end or a cancel, free it."""
        stream: Any = None
        pieces: Iterator[str] | None = None
        try:
            if job.cancel.is_set():
                job.post("cancelled")
                return
            try:
                stream = self.model.stream(prompt_ids, **options)
            except Exception as exc:  # noqa: BLE001 - reported to the request
                job.post("error", exc)
                return
            job.post("started")
            pieces = iter(stream)
            while not job.cancel.is_set():
                try:
                    piece = next(pieces)
                except StopIteration:
                    job.post("done", stream.result)
                    return
                job.post("piece", piece)
            job.post("cancelled")
        except Exception as exc:  # noqa: BLE001 - reported to the request
            job.post("error", exc)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # ends the Stream's loop: its C++ generator is released with it
            pieces = stream = None
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(self._release, job)

    # -- response bodies ----------------------------------------------------------------
    def _tandem(self, prep: _Prepared, result: Any) -> dict[str, Any]:
        return {**prep.info, "finish_reason": result.finish_reason, "stats": _plain_stats(result.stats)}

    def _usage(self, prep: _Prepared, result: Any) -> dict[str, int]:
        completion = len(result.ids)
        return {"prompt_tokens": len(prep.prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prep.prompt_ids) + completion}

    def _final_body(self, prep: _Prepared, result: Any) -> dict[str, Any]:
        self.counters["completed"] += 1
        finish = _finish_reason(result.finish_reason)
        if prep.req.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                      "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": prep.request_id, "object": obj, "created": prep.created, "model": self.config.model_id,
                "choices": [choice], "usage": self._usage(prep, result), "system_fingerprint": None,
                "tandem": self._tandem(prep, result)}

    def _chunk(self, prep: _Prepared, text: str | None, finish: str | None = None,
               first: bool = False) -> dict[str, Any]:
        if prep.req.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": prep.request_id, "object": obj, "created": prep.created, "model": self.config.model_id,
                "choices": [choice], "system_fingerprint": None}

    async def sse_chunks(self, job: _Job, prep: _Prepared) -> AsyncIterator[bytes]:
        """The events of a streamed request: a chunk per text piece, a final chunk with the
        finish reason and the `tandem` stats (and usage), an optional usage-only chunk, [DONE]."""
        if prep.req.chat:
            yield _sse(self._chunk(prep, "", first=True))
        while True:
            kind, value = await job.events.get()
            if kind == "piece":
                if value:
                    yield _sse(self._chunk(prep, value))
            elif kind == "done":
                self.counters["completed"] += 1
                final = self._chunk(prep, None, finish=_finish_reason(value.finish_reason))
                final["usage"] = self._usage(prep, value)
                final["tandem"] = self._tandem(prep, value)
                yield _sse(final)
                if prep.req.include_usage:
                    usage = self._chunk(prep, None)
                    usage["choices"] = []
                    usage["usage"] = self._usage(prep, value)
                    yield _sse(usage)
                yield _sse("[DONE]")
                return
            elif kind == "disconnected":
                self.counters["cancelled"] += 1
                return
            else:  # an error (or the server stopping) after the headers went out: an error event, as OpenAI sends
                err = _shutting_down() if kind == "cancelled" else api_error_from(value, "run")
                self.counters["failed"] += 1
                yield _sse(err.body())
                yield _sse("[DONE]")
                return


class _AuthMiddleware:
    """Every request but GET /health needs `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, app: Any, server: TandemServer) -> None:
        self.app, self.server = app, server
        self.key = (server.config.api_key or "").encode()

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                err = APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                               "with the key the server was started with (--api-key / TANDEM_API_KEY)"
                               if header else
                               "this server needs an API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
                response = self.server.error_response(err)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- running it


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: a free one), or InvalidArgumentError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgumentError(f"cannot resolve the host {host!r} ({exc}): pass an address such as "
                                   "127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port, "
                                   "or stop what holds it") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _uvicorn_server(server: TandemServer, log_level: str, access_log: bool) -> Any:
    _, uvicorn = require_serve_dependencies()
    config = uvicorn.Config(server.app(), log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=5, http="h11")
    return uvicorn.Server(config)


def serve(model: TandemModel, config: ServerConfig | None = None, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, log_level: str = "info", access_log: bool = True,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `model` until SIGINT / SIGTERM. `on_ready(url)` is called once the socket is bound."""
    require_serve_dependencies()
    server = TandemServer(model, config)
    sock = bind_socket(host, port)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        _uvicorn_server(server, log_level, access_log).run(sockets=[sock])
    finally:
        sock.close()


class RunningServer:
    """A server on a background thread (tests, benchmarks); `stop()` ends it."""

    def __init__(self, model: TandemModel, config: ServerConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0, log_level: str = "warning") -> None:
        require_serve_dependencies()
        self.server = TandemServer(model, config)
        self._sock = bind_socket(host, port)
        self.url = url_of(self._sock)
        self._uvicorn = _uvicorn_server(self.server, log_level, access_log=False)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]},
                                        name="tandem-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeBackendError(f"the server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(model: TandemModel, config: ServerConfig | None = None, host: str = "127.0.0.1",
                   port: int = 0) -> Iterator[RunningServer]:
    """`with running_server(model, config) as s: ...s.url...`: a server on a free loopback port."""
    server = RunningServer(model, config, host, port)
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "APIError",
    "Admission",
    "GenerationRequest",
    "RunningServer",
    "ServerConfig",
    "TandemServer",
    "bind_socket",
    "parse_chat",
    "parse_completion",
    "parse_json_body",
    "require_serve_dependencies",
    "running_server",
    "serve",
]
