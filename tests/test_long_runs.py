"""Long runs: generation to the context limit, interruption from Python, and no memory
growth over 1,000 consecutive generations."""

from __future__ import annotations

import os

import pytest

from tandem import _core
from tandem.errors import InvalidArgumentError
from tandem.runtime import load

CONTEXT = 64
MODES = [("large", 1), ("tandem", 4), ("speed", 5), ("vanilla", 3), ("speed", "auto")]


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


@pytest.mark.parametrize(("mode", "gamma"), MODES)
@pytest.mark.parametrize("prompt_len", [1, 20, 57, 63])
def test_runs_to_exactly_the_context_limit(model, mode, gamma, prompt_len):
    prompt = [(7 * i + 3) % 300 for i in range(prompt_len)]
    for do_sample in (False, True):
        got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=10_000,
                             ignore_eos=True, do_sample=do_sample, seed=prompt_len)
        assert got.finish_reason == "length"
        assert len(prompt) + len(got.ids) == CONTEXT
    # max_new_tokens landing exactly on the limit: max_new_tokens wins (checked first)
    got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=CONTEXT - prompt_len,
                         ignore_eos=True)
    assert len(got.ids) == CONTEXT - prompt_len and got.finish_reason == "max_new_tokens"


@pytest.mark.parametrize(("mode", "gamma"), MODES)
def test_keyboard_interrupt_in_stream_leaves_model_usable(model, mode, gamma):
    kwargs = dict(mode=mode, block_length=gamma, max_new_tokens=40, ignore_eos=True)
    before = model.generate("def add(a, b):", **kwargs)
    stream = model.stream("def add(a, b):", **kwargs)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for piece in stream:
            seen.append(piece)
            if len(seen) == 2:
                raise KeyboardInterrupt
    assert "".join(seen) == before.text[: len("".join(seen))]
    after = model.generate("def add(a, b):", **kwargs)
    assert after.ids == before.ids and after.text == before.text
    # the abandoned stream's generator is not left busy either
    assert stream.result is None
    assert list(stream)  # a fresh iteration goes on from where it stopped, without errors


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_request(model, i: int) -> None:
    kind = i % 6
    if kind == 0:
        model.generate([1 + i % 200, 2, 3], mode="speed", block_length=4, max_new_tokens=12, ignore_eos=True)
    elif kind == 1:
        model.generate([5, i % 300], mode="vanilla", block_length=3, max_new_tokens=12, do_sample=True,
                       top_k=20, seed=i, ignore_eos=True)
    elif kind == 2:
        model.generate("for i in", mode="tandem", block_length=2, max_new_tokens=12)
    elif kind == 3:  # abandoned stream
        for _ in model.stream([9, 9, 9], mode="speed", block_length="auto", max_new_tokens=30):
            break
    elif kind == 4:  # refused request
        with pytest.raises(InvalidArgumentError):
            model.generate([300])
    else:  # bare core generator, dropped half way
        gen = _core.Generator(model._model, [4, 2], _core.GenerateOptions(mode="large", max_new_tokens=20))
        gen.step()
        gen.step()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_no_leak_over_1000_generations(model):
    for i in range(120):  # warm-up: arenas, caches and allocator pools reach their steady size
        one_request(model, i)
    start = rss_bytes()
    for i in range(1000):
        one_request(model, i)
    growth = rss_bytes() - start
    # a leak of even 1 KiB per request would show as >= 1 MiB; allow allocator noise of 8 MiB
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 1000 generations"

