"""`tandem serve`: the OpenAI-compatible server, driven with the official `openai` client (and
raw HTTP for what a client library would never send) against servers on free loopback ports.

The model behind each server is a real tiny bundle (the session's `pair`, plus a copy with a
chat template). To hold a generation in flight deterministically, `GatedModel` wraps the real
model: its streams are the real ones, but every text piece after the first waits for the test
to open a gate, as a long C++ step would.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from urllib.parse import urlparse

import httpx
import openai
import pytest

from tandem.errors import InvalidArgumentError, MissingDependencyError
from tandem.runtime import load
from tandem.runtime.server import ServerConfig, running_server

pytestmark = pytest.mark.filterwarnings("ignore::tandem.errors.UntrainedBlockLengthWarning")

TEMPLATE = ("{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
            "<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
PROMPTS = ["def add(a, b):", "class Point:", "for i in range(10):", "The quick brown fox", "print(i * i)",
           "    return a + b"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    """Polls until `predicate()` holds; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def client(url: str, key: str = "unused", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


@pytest.fixture(scope="module")
def chat_model(pair, tmp_path_factory):
    """The pair's bundle with a chat template added (as the exporter writes one)."""
    bundle = tmp_path_factory.mktemp("serve") / "chat-bundle"
    shutil.copytree(pair.bundle, bundle)
    (bundle / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    manifest = json.loads((bundle / "tandem.json").read_text())
    manifest["chat_template"] = "chat_template.jinja"
    (bundle / "tandem.json").write_text(json.dumps(manifest))
    return load(bundle, threads=1)


@pytest.fixture(scope="module")
def srv(chat_model):
    config = ServerConfig(model_id="tiny", max_concurrent=2, queue_size=16, max_body_bytes=64 * 1024)
    with running_server(chat_model, config) as server:
        yield server


class GatedModel:
    """The real model, whose streams pause before every text piece after the first until `go`
    is set. Records the real Stream objects (weakly) and how each ended."""

    def __init__(self, model) -> None:
        self._model = model
        self.go = threading.Event()
        self.streams: list[weakref.ref] = []
        self.finished = 0
        self.abandoned = 0

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def stream(self, prompt, **options):
        real = self._model.stream(prompt, **options)
        self.streams.append(weakref.ref(real))
        return _GatedStream(self, real)


class _GatedStream:
    def __init__(self, owner: GatedModel, real) -> None:
        self.owner, self.real, self.result = owner, real, None

    def __iter__(self):
        try:
            for i, piece in enumerate(self.real):
                if i and not self.owner.go.wait(60):
                    raise RuntimeError("the test never opened the gate")
                yield piece
            self.result = self.real.result
            self.owner.finished += 1
        finally:
            if self.result is None:
                self.owner.abandoned += 1


@pytest.fixture
def gated(model):
    """A server over the gated pair bundle (no chat template): one slot, one queue place."""
    gm = GatedModel(model)
    with running_server(gm, ServerConfig(model_id="gated", max_concurrent=1, queue_size=1)) as server:
        server.gated = gm
        try:
            yield server
        finally:
            gm.go.set()  # let any held worker finish, so the server can stop


LONG = {"prompt": "def add(a, b):", "max_tokens": 30, "temperature": 0, "ignore_eos": True, "mode": "large"}


def raw_post(url: str, path: str, body: dict | bytes) -> socket.socket:
    """Sends a POST on a raw socket and returns the socket (to close it mid-request)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


# --------------------------------------------------------------------------- completions


@pytest.mark.parametrize("mode,block", [("large", None), ("speed", 3), ("vanilla", 2), ("tandem", 4),
                                        ("speed", "auto")])
def test_greedy_completion_equals_generate(srv, chat_model, mode, block):
    c = client(srv.url)
    extra = {"mode": mode} | ({"block_length": block} if block is not None else {})
    for prompt in PROMPTS[:3]:
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, extra_body=extra)
        ref = chat_model.generate(prompt, mode=mode, block_length=block, max_new_tokens=20)
        assert r.choices[0].text == ref.text
        assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "max_new_tokens" else "stop")
        assert r.usage.prompt_tokens == len(chat_model.encode(prompt))
        assert r.usage.completion_tokens == len(ref.ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
        tandem = r.model_extra["tandem"]
        assert tandem["mode"] == mode and tandem["finish_reason"] == ref.finish_reason
        assert tandem["block_length"] == (block if block is not None else 4 if mode != "large" else None)
        assert tandem["stats"]["new_tokens"] == len(ref.ids)
        assert tandem["stats"]["rounds"] == ref.stats["rounds"]  # the same decoding, step for step


def test_streamed_completion_equals_generate(srv, chat_model):
    c = client(srv.url)
    ref = chat_model.generate(PROMPTS[0], mode="speed", block_length=2, max_new_tokens=24, ignore_eos=True)
    chunks = list(c.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"mode": "speed", "block_length": 2, "ignore_eos": True}))
    text_chunks = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].text for ch in text_chunks) == ref.text
    assert len(text_chunks) > 2  # streamed in pieces, not at once
    assert all(ch.choices[0].finish_reason is None for ch in text_chunks[:-1])
    final = text_chunks[-1]
    assert final.choices[0].finish_reason == "length"
    assert final.model_extra["tandem"]["stats"]["new_tokens"] == 24
    assert final.usage.completion_tokens == 24
    usage_chunk = chunks[-1]  # stream_options.include_usage: a last chunk with no choices
    assert usage_chunk.choices == [] and usage_chunk.usage.prompt_tokens == len(chat_model.encode(PROMPTS[0]))
    assert len({ch.id for ch in chunks}) == 1

    # the wire format: data lines, ending with [DONE]
    with httpx.stream("POST", f"{srv.url}/v1/completions",
                      json={"prompt": PROMPTS[1], "max_tokens": 5, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_token_id_prompt_stop_strings_and_sampling(srv, chat_model):
    c = client(srv.url)
    ids = chat_model.encode(PROMPTS[2])
    ref = chat_model.generate(ids, mode="large", max_new_tokens=20, ignore_eos=True)
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0,
                             extra_body={"mode": "large", "ignore_eos": True})
    assert r.choices[0].text == ref.text and r.usage.prompt_tokens == len(ids)

    stop = ref.text[len(ref.text) // 2:][:2]
    assert stop
    stopped = chat_model.generate(ids, mode="large", max_new_tokens=20, ignore_eos=True, stop=[stop])
    assert stopped.finish_reason == "stop"
    for stream in (False, True):
        r = c.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0, stop=[stop, "zzz"],
                                 stream=stream, extra_body={"mode": "large", "ignore_eos": True})
        if stream:
            chunks = list(r)
            text, finish = "".join(ch.choices[0].text for ch in chunks), chunks[-1].choices[0].finish_reason
        else:
            text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert text == stopped.text and stop not in text and finish == "stop"

    # sampling: temperature > 0 with a seed is the API's sampled generation, reproducibly
    opts = dict(mode="speed", block_length=3, max_new_tokens=16)
    sampled = chat_model.generate(ids, do_sample=True, temperature=0.7, top_p=0.9, seed=11, **opts)
    for _ in range(2):
        r = c.completions.create(model="tiny", prompt=ids, max_tokens=16, temperature=0.7, top_p=0.9, seed=11,
                                 extra_body={"mode": "speed", "block_length": 3})
        assert r.choices[0].text == sampled.text
        assert r.model_extra["tandem"]["seed"] == 11 and r.model_extra["tandem"]["do_sample"] is True


# --------------------------------------------------------------------------- chat


def test_chat_equals_model_chat(srv, chat_model):
    c = client(srv.url)
    ref = chat_model.chat(MESSAGES, mode="speed", max_new_tokens=12)
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(chat_model.apply_chat_template(MESSAGES, tokenize=True))
    assert r.usage.completion_tokens == len(ref.ids)

    chunks = list(c.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=12,
                                            temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].model_extra["tandem"]["stats"]["new_tokens"] == len(ref.ids)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)

    # content as text parts, and "developer" as the system role
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": "def add(a, b):"}]
    r2 = c.chat.completions.create(model="tiny", messages=parts, max_tokens=12, temperature=0)
    assert r2.choices[0].message.content == ref.text


def test_chat_errors(srv, gated):
    with pytest.raises(openai.BadRequestError) as exc:
        client(gated.url).chat.completions.create(model="gated", messages=MESSAGES, max_tokens=4)
    assert exc.value.status_code == 400 and exc.value.code == "chat_template_missing"
    assert "no chat template" in exc.value.message
    c = client(srv.url)
    with pytest.raises(openai.BadRequestError, match="unknown role tool"):  # the template's raise_exception
        c.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}], max_tokens=4)
    long = [{"role": "user", "content": "def add(a, b): " * 40}]
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="tiny", messages=long, max_tokens=4)
    assert exc.value.code == "context_length_exceeded" and exc.value.param == "messages"
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.code == "model_not_found"


# --------------------------------------------------------------------------- models, health


def test_models_and_health(srv, chat_model):
    c = client(srv.url)
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny"]
    info = models[0].model_extra["tandem"]
    assert info["modes"] == chat_model.modes and info["context_length"] == chat_model.context_length
    assert info["chat_template"] is True
    assert c.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("other")
    h = health(srv.url)
    assert h["status"] == "ok" and h["max_concurrent"] == 2 and h["queue_size"] == 16


# --------------------------------------------------------------------------- bad input


LONG_PROMPT = "def add(a, b): " * 40
BAD = [
    # (path, raw body, status, param or code expected in the error)
    ("c", b"{", 400, "invalid_json"),
    ("c", b'{"prompt": "a", "max_tokens": 4', 400, "invalid_json"),
    ("c", b"", 400, "invalid_json"),
    ("c", b'{"prompt": "caf\xe9"}', 400, "invalid_encoding"),
    ("c", b'{"prompt": "\xff\xfe"}', 400, "invalid_encoding"),
    ("c", b"[1, 2]", 400, "invalid_json"),
    ("c", b'{"prompt": "a", "temperature": NaN}', 400, "invalid_json"),
    ("c", b'{"prompt": "a", "max_tokens": 1e999}', 400, "max_tokens"),
    ("c", b"[" * 30000 + b"]" * 30000, 400, "invalid_json"),
    ("c", b'{"prompt": "\\ud800"}', 400, "prompt"),
    ("c", b'{"prompt": "a", "deep": ' + b"[" * 900 + b"]" * 900 + b"}", 400, "deep"),  # parses, then refused
    ("c", {"prompt": "a", "bogus": 1}, 400, "unknown_field"),
    ("c", {"prompt": "a", "temperature": "0"}, 400, "temperature"),
    ("c", {"prompt": "a", "temperature": 2.5}, 400, "temperature"),
    ("c", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("c", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("c", {"prompt": "a", "max_tokens": 65}, 400, "max_tokens"),  # beyond the 64-token context
    ("c", {"prompt": "a", "max_tokens": 4.5}, 400, "max_tokens"),
    ("c", {"prompt": "a", "max_tokens": True}, 400, "max_tokens"),
    ("c", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("c", {"prompt": "a", "seed": -1}, 400, "seed"),
    ("c", {"prompt": "a", "seed": 2**64}, 400, "seed"),
    ("c", {"prompt": "a", "n": 2}, 400, "n"),
    ("c", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("c", {"prompt": "a", "stop": ""}, 400, "stop"),
    ("c", {"prompt": "a", "stop": 3}, 400, "stop"),
    ("c", {"prompt": "a", "block_length": 99}, 400, "block_length"),
    ("c", {"prompt": "a", "block_length": "fast"}, 400, "block_length"),
    ("c", {"prompt": "a", "mode": "turbo"}, 400, "mode"),
    ("c", {"prompt": "a", "mode": "large", "block_length": "auto"}, 400, None),
    ("c", {"prompt": "a", "logprobs": 5}, 400, "logprobs"),
    ("c", {"prompt": "a", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("c", {"prompt": "a", "stream": True, "stream_options": {"x": 1}}, 400, "stream_options.x"),
    ("c", {"max_tokens": 4}, 400, "prompt"),
    ("c", {"prompt": ""}, 400, "prompt"),
    ("c", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("c", {"prompt": [1, 2, 100000]}, 400, "prompt"),
    ("c", {"prompt": [1, "a"]}, 400, "prompt"),
    ("c", {"prompt": LONG_PROMPT}, 400, "context_length_exceeded"),
    ("c", {"prompt": LONG_PROMPT * 10}, 400, "context_length_exceeded"),  # over 4 KiB: prepared in a thread
    ("c", {"prompt": "a", "model": "gpt-4o"}, 404, "model_not_found"),
    ("chat", {"messages": []}, 400, "messages"),
    ("chat", {"messages": "hi"}, 400, "messages"),
    ("chat", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400, "messages[0].extra"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "messages[0].content"),
    ("chat", {"messages": [{"content": "x"}]}, 400, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "max_completion_tokens": 4},
     400, "max_completion_tokens"),
    ("chat", {"prompt": "x"}, 400, "messages"),
    ("c", b"x" * (65 * 1024), 413, "body_too_large"),
]


@pytest.mark.parametrize("path,body,status,what", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_with_an_openai_error(srv, path, body, status, what):
    url = f"{srv.url}/v1/{'completions' if path == 'c' else 'chat/completions'}"
    r = httpx.post(url, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and error["type"]
    assert set(error) == {"message", "type", "param", "code"}
    if what is not None:
        assert what in (error["param"], error["code"]), error


def test_server_survives_bad_input_and_routes(srv):
    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/v1/completions", 405),
                                 ("DELETE", "/v1/models", 405)):
        r = httpx.request(method, f"{srv.url}{path}")
        assert r.status_code == status and r.json()["error"]["message"]
    h = health(srv.url)
    assert h["status"] == "ok" and h["active"] == 0 and h["failed"] == 0
    assert h["rejected"] >= len(BAD)  # every bad request above was a client error, none a failure
    r = client(srv.url).completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens >= 1
    # a body over 4 KiB is prepared in a thread, with the same answer
    big = client(srv.url).completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0, user="u" * 5000)
    assert big.choices[0].text == r.choices[0].text


# --------------------------------------------------------------------------- limits, cancellation


def test_cancel_frees_the_slot_and_a_full_queue_is_429(gated, model):
    gm = gated.gated
    c = client(gated.url)
    stream = c.completions.create(model="gated", stream=True, extra_body={"ignore_eos": True, "mode": "large"},
                                  prompt=LONG["prompt"], max_tokens=30, temperature=0)
    events = iter(stream)
    first = next(events)
    assert first.choices[0].text  # the generation is in flight, held before its next piece
    assert health(gated.url)["active"] == 1  # the event loop answers while the worker is busy

    # one more request waits for the slot; closing it while queued leaves nothing behind
    queued = raw_post(gated.url, "/v1/completions", LONG)
    wait_for(lambda: health(gated.url)["queued"] == 1, "the request to queue")
    queued.close()
    wait_for(lambda: health(gated.url)["queued"] == 0, "the closed request to leave the queue")

    results: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: results.update(r=c.completions.create(
        model="gated", prompt=PROMPTS[1], max_tokens=8, temperature=0, extra_body={"mode": "large"})))
    waiter.start()
    wait_for(lambda: health(gated.url)["queued"] == 1, "the second request to queue")
    with pytest.raises(openai.RateLimitError) as exc:  # one running, one waiting: full
        c.completions.create(model="gated", prompt="a", max_tokens=2)
    assert exc.value.status_code == 429 and exc.value.code == "rate_limit_exceeded"
    assert exc.value.response.headers["retry-after"] == "1"

    stream.close()  # the client goes away mid-stream
    wait_for(lambda: health(gated.url)["cancelled"] >= 2, "the server to see the disconnect")
    assert gm.abandoned == 0  # the worker is still inside its step
    gm.go.set()  # the step in progress ends; the worker must stop there and free the generator
    waiter.join(60)
    assert not waiter.is_alive()
    ref = model.generate(PROMPTS[1], mode="large", max_new_tokens=8)
    assert results["r"].choices[0].text == ref.text  # the queued request got the slot
    wait_for(lambda: health(gated.url)["active"] == 0, "the slots to be released")
    h = health(gated.url)
    assert h["queued"] == 0 and h["completed"] == 1 and h["rejected"] == 1
    assert gm.abandoned == 1 and gm.finished == 1  # the cancelled stream never ran to its end
    gc.collect()
    assert all(ref() is None for ref in gm.streams)  # every generator freed
    assert len(gm.streams) == 2  # the request closed while queued never started one


def test_disconnect_cancels_a_non_streamed_request(gated):
    gm = gated.gated
    sock = raw_post(gated.url, "/v1/completions", LONG)
    wait_for(lambda: health(gated.url)["active"] == 1 and len(gm.streams) == 1, "the generation to start")
    sock.close()
    wait_for(lambda: health(gated.url)["cancelled"] == 1, "the server to see the disconnect")
    gm.go.set()
    wait_for(lambda: health(gated.url)["active"] == 0, "the slot to be released")
    assert gm.abandoned == 1 and gm.finished == 0
    r = client(gated.url).completions.create(model="gated", prompt="a", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_concurrent_clients_each_get_their_own_answer(chat_model):
    config = ServerConfig(model_id="tiny", max_concurrent=2, queue_size=8)
    refs = {p: chat_model.generate(p, mode="speed", block_length=2, max_new_tokens=16, ignore_eos=True).text
            for p in PROMPTS}
    got: dict[str, list[str]] = {p: [] for p in PROMPTS}
    with running_server(chat_model, config) as server:
        def run(prompt: str) -> None:
            c = client(server.url)
            for _ in range(2):
                chunks = c.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True,
                                              extra_body={"mode": "speed", "block_length": 2, "ignore_eos": True})
                got[prompt].append("".join(ch.choices[0].text for ch in chunks))

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        h = health(server.url)
    assert got == {p: [refs[p]] * 2 for p in PROMPTS}
    assert h["completed"] == 2 * len(PROMPTS) and h["active"] == 0 and h["failed"] == 0


# --------------------------------------------------------------------------- API key


def test_api_key(chat_model):
    with running_server(chat_model, ServerConfig(model_id="tiny", api_key="s3cret")) as server:
        with pytest.raises(openai.AuthenticationError) as exc:
            client(server.url, key="wrong").completions.create(model="tiny", prompt="a", max_tokens=2)
        assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"
        for headers in ({}, {"authorization": "Basic s3cret"}, {"authorization": "Bearer s3cre"}):
            r = httpx.get(f"{server.url}/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{server.url}/v1/completions", content=b"{").status_code == 401  # the key comes first
        assert httpx.get(f"{server.url}/health").status_code == 200  # open for probes
        good = client(server.url, key="s3cret")
        assert good.completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0).usage.total_tokens
        assert [m.id for m in good.models.list().data] == ["tiny"]


# --------------------------------------------------------------------------- settings, CLI


def test_config_is_checked(chat_model):
    for bad in (dict(max_concurrent=0), dict(queue_size=-1), dict(default_mode="warp"), dict(api_key=""),
                dict(default_block_length=99), dict(model_id=" ")):
        with pytest.raises(InvalidArgumentError):
            ServerConfig(**bad).check(chat_model)


def test_missing_serve_extra_names_the_install(monkeypatch, capsys, pair):
    from tandem.cli import main
    from tandem.runtime.server import require_serve_dependencies

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'tandem-runtime\[serve\]'"):
        require_serve_dependencies()
    assert main(["serve", str(pair.bundle)]) == 1
    assert "pip install 'tandem-runtime[serve]'" in capsys.readouterr().err


def test_serve_help(capsys):
    from tandem.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--api-key", "TANDEM_API_KEY", "--max-concurrent", "--queue-size",
                   "--threads", "--mode", "--block-length", "--model-id", "127.0.0.1"):
        assert option in out


def test_tandem_serve_command(pair):
    """The real command: loopback by default, the key from TANDEM_API_KEY, stops on SIGINT."""
    env = dict(os.environ, TANDEM_API_KEY="k3y")
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", str(pair.bundle), "--port", "0",
                             "--threads", "1", "--no-access-log"], stderr=subprocess.PIPE, text=True, env=env,
                            # as from a terminal: a shell without job control starts background jobs
                            # (`make test &`) with SIGINT ignored, and the server would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        for line in proc.stderr:
            if " on http://" in line:
                url = line.split(" on ", 1)[1].split()[0].removesuffix("/v1")
                break
        assert url and url.startswith("http://127.0.0.1:"), url
        wait_for(lambda: _reachable(url), "the server to accept connections")
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer k3y"}).json()
        assert models["data"][0]["id"] == Path(pair.bundle).name
        r = client(url, key="k3y").completions.create(model=Path(pair.bundle).name, prompt="a", max_tokens=3,
                                                      temperature=0)
        assert r.usage.prompt_tokens >= 1
        proc.send_signal(signal.SIGINT)  # Ctrl+C: a graceful stop, then the usual exit status 130
        assert proc.wait(60) == 130
        assert "interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


# --------------------------------------------------------------------------- the load test


def test_serve_load_benchmark_runs(pair, tmp_path):
    """bench/serve_load.py end to end on the tiny bundle: every answer checked, files written."""
    from tandem.bench import serve_load

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:3]))
    out = tmp_path / "out"
    code = serve_load.main([str(pair.bundle), "--clients", "3", "--requests", "2", "--max-tokens", "6",
                            "--threads", "1", "--prompts", str(prompts), "--out", str(out), "--no-plots"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["load"]["requests"] == 6 and results["load"]["ok"] == 6 and results["load"]["mismatches"] == 0
    assert results["sequential"]["ok"] == results["sequential"]["requests"] == 6
    assert results["load"]["statuses"] == {"200": 6}
    assert results["health_after"]["active"] == 0 and results["health_after"]["failed"] == 0
    assert "| load | 3 × 2 | 6 / 6 |" in (out / "results.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "tandem.bench.serve_load", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--clients" in help_text and "--max-concurrent" in help_text
