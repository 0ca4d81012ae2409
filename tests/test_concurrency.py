"""One loaded model shared by threads: each request gives exactly its sequential output;
a generator driven by two threads at once is refused (BusyError), never corrupted.

No sleeps and no timing: threads start together on a Barrier; the overlap test retries
fresh generators until two calls did overlap (which needs the GIL released in step()).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from tandem import _core
from tandem.errors import BusyError
from tandem.runtime import load

THREADS = 4
PROMPTS = [[1, 2, 3, 4], [17], [5, 80, 81, 82, 83, 84, 85, 86, 87]]
CONFIGS = [
    dict(mode="large"),
    dict(mode="tandem", block_length=3),
    dict(mode="speed", block_length=4),
    dict(mode="vanilla", block_length=2),
    dict(mode="speed", block_length="auto", router_threshold=0.5),
    dict(mode="speed", block_length=3, do_sample=True, temperature=0.8, top_k=30, seed=11),
    dict(mode="vanilla", block_length=3, do_sample=True, top_p=0.9, seed=5),
    dict(mode="tandem", block_length=2, do_sample=True, seed=3),
]
REQUESTS = [(p, c) for p in PROMPTS for c in CONFIGS]


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


def run(model, prompt, config):
    return model.generate(prompt, max_new_tokens=20, ignore_eos=True, **config).ids


def run_threads(target, count: int) -> list[BaseException]:
    """Runs target(index, barrier) in `count` threads started together; returns their errors."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_give_sequential_outputs(model):
    expected = [run(model, p, c) for p, c in REQUESTS]
    results: dict[tuple[int, int], list[int]] = {}

    def worker(t: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        order = list(range(len(REQUESTS)))
        order = order[5 * t:] + order[: 5 * t]  # every thread in its own order
        for i in order[::-1] if t % 2 else order:
            results[(t, i)] = run(model, *REQUESTS[i])

    assert run_threads(worker, THREADS) == []
    assert len(results) == THREADS * len(REQUESTS)
    for (t, i), ids in results.items():
        assert ids == expected[i], f"thread {t}, request {REQUESTS[i]}"


def test_streams_interleaved_in_threads(model):
    """Streams of several requests advanced piece by piece from threads equal generate()."""
    expected = [model.generate([3, 1, 4], mode="speed", block_length=2, max_new_tokens=15, seed=t,
                               do_sample=True, ignore_eos=True).text for t in range(THREADS)]
    texts = [""] * THREADS

    def worker(t: int, barrier: threading.Barrier) -> None:
        stream = model.stream([3, 1, 4], mode="speed", block_length=2, max_new_tokens=15, seed=t,
                              do_sample=True, ignore_eos=True)
        barrier.wait()
        for piece in stream:
            texts[t] += piece

    assert run_threads(worker, THREADS) == []
    assert texts == expected


def test_generator_used_by_two_threads_is_refused(model):
    prompt = [2, 7, 1, 8]
    reference = model.generate(prompt, mode="speed", block_length=2, max_new_tokens=1000,
                               ignore_eos=True).ids
    refused = 0
    for _ in range(200):
        gen = _core.Generator(model._model, prompt, _core.GenerateOptions(mode="speed", block_length=2,
                                                                         max_new_tokens=1000, ignore_eos=True))
        emitted = []
        busy = [0, 0]

        def drive(t: int, barrier: threading.Barrier, gen=gen, emitted=emitted, busy=busy) -> None:
            barrier.wait()
            while True:
                try:
                    new = gen.step()
                except BusyError:
                    busy[t] += 1
                    continue
                if not new:
                    return
                emitted.extend(new)  # list.extend holds the GIL: atomic

        assert run_threads(drive, 2) == []
        assert gen.tokens == reference, "a refused call must leave the generator intact"
        assert sorted(emitted) == sorted(reference)
        assert gen.finish_reason == "length"
        refused += sum(busy)
        if refused:
            break
    assert refused > 0, "two threads never overlapped inside step(): is the GIL released?"


def test_busy_error_message(model):
    assert issubclass(BusyError, Exception)
    gen = _core.Generator(model._model, [1], _core.GenerateOptions(max_new_tokens=2))
    assert gen.run() and gen.done  # after a run the generator is free again


def _concurrency_binary() -> Path | None:
    env = os.environ.get("TANDEM_CONCURRENCY_BIN")
    candidates = [Path(env)] if env else []
    root = Path(__file__).resolve().parent.parent
    candidates += [root / "build" / d / "cpp" / "tandem_concurrency_test" for d in ("cpp", "asan")]
    return next((c for c in candidates if c.is_file()), None)


def test_cpp_concurrency_program(pair):
    """cpp/tests/concurrency_test.cpp: the same properties through the C++ API alone."""
    binary = _concurrency_binary()
    if binary is None:
        pytest.skip("tandem_concurrency_test is not built: run `make cpp` (or set TANDEM_CONCURRENCY_BIN)")
    env = {**os.environ, "TANDEM_TEST_BUNDLE": str(pair.bundle)}
    done = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 mismatches, 0 errors" in done.stdout and "OK" in done.stdout
