"""The C++ front ends without Python: the example programs (token ids: tandem_generate; text:
tandem_complete) and an app built against an installed tandem with find_package (ids and, through
the C text API, text), all checked against the Python API on one bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tandem.runtime import load, max_threads
from tandem.runtime.ort_library import find_ort_library

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = os.environ.get("TANDEM_EXAMPLE_BIN", str(ROOT / "build/cpp/cpp/tandem_generate"))
SANITIZED = bool(os.environ.get("TANDEM_SANITIZED"))


def _example() -> Path:
    path = Path(EXAMPLE)
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `make cpp` (make test does)")
    return path


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if SANITIZED:
        # ORT's own allocations are not ours to judge; our code is instrumented
        env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


def test_example_has_no_python():
    out = subprocess.run(["ldd", str(_example())], capture_output=True, text=True, check=True).stdout
    assert "libpython" not in out


@pytest.mark.parametrize(("mode", "gamma"), [("large", 1), ("speed", 3), ("vanilla", 4), ("tandem", 2)])
def test_example_matches_python(pair, mode, gamma):
    prompt = [3, 14, 15, 92]
    expected = load(pair.bundle, threads=1).generate(prompt, mode=mode, block_length=gamma, max_new_tokens=16)
    cmd = [str(_example()), str(pair.bundle), "--ids", ",".join(map(str, prompt)), "--mode", mode,
           "--block-length", str(gamma), "--max-new-tokens", "16", "--threads", "1",
           "--ort-library", find_ort_library() or ""]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [int(x) for x in lines[0].split()] == expected.ids
    assert lines[1] == f"finish_reason: {expected.finish_reason}"


def test_example_reports_errors(pair, tmp_path):
    run = subprocess.run([str(_example()), str(tmp_path / "nope"), "--ids", "1"], capture_output=True,
                         text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 1 and "bundle folder not found" in run.stderr
    run = subprocess.run([str(_example()), str(pair.bundle), "--ids", "1", "--mode", "fast"],
                         capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 2 and "unknown mode" in run.stderr
    run = subprocess.run([str(_example()), str(pair.bundle), "--ids", "999999"], capture_output=True,
                         text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 1 and "outside the vocabulary" in run.stderr


def test_example_refuses_thread_counts_past_the_cap(pair):
    cap = max_threads()
    run = subprocess.run([str(_example()), str(pair.bundle), "--ids", "1", "--threads", str(cap + 1)],
                         capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 1 and f"intra_op_threads={cap + 1} is above the cap of {cap} threads" in run.stderr


@pytest.mark.skipif(SANITIZED, reason="the install/find_package check runs in the regular build")
def test_installed_library_works_with_find_package(pair, tmp_path):
    build = ROOT / "build/cpp"
    if not (build / "CMakeCache.txt").is_file():
        pytest.fail("build/cpp is not configured: run `make cpp` (make test does)")
    cmake = shutil.which("cmake", path=str(ROOT / ".venv/bin")) or "cmake"
    prefix = tmp_path / "prefix"
    subprocess.run([cmake, "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True)
    assert (prefix / "include/tandem/tandem.hpp").is_file()
    consumer = tmp_path / "consumer"
    subprocess.run([cmake, "-S", str(ROOT / "tests/cmake_consumer"), "-B", str(consumer), "-G", "Ninja",
                    f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(consumer)], check=True, capture_output=True)
    prompt = [3, 14, 15, 92]
    model = load(pair.bundle, threads=1)
    eos = model.generate(prompt, mode="large", max_new_tokens=6, ignore_eos=True).ids[3]
    # every field of tandem_generate_params, through the C API, against the Python API
    cases = [
        dict(mode="speed", max_new_tokens=12),
        dict(mode="vanilla", adaptive=1, min_block_length=2, max_block_length=3, router_threshold=0.3,
             max_new_tokens=14, do_sample=1, temperature=0.8, top_k=40, top_p=0.95, seed=7, ignore_eos=1),
        dict(mode="tandem", block_length=2, max_new_tokens=9),
        dict(mode="speed", block_length=3, max_new_tokens=20, eos_token_ids=[eos, 299]),
    ]
    for options in cases:
        args = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items()]
        run = subprocess.run([str(consumer / "consumer"), str(pair.bundle), ",".join(map(str, prompt)), *args],
                             capture_output=True, text=True, env=_clean_env(), timeout=120)
        assert run.returncode == 0, run.stderr
        expected = model.generate(prompt, **options)
        ids, reason = run.stdout.splitlines()
        assert [int(x) for x in ids.split()] == expected.ids, options
        assert reason == expected.finish_reason
    assert expected.finish_reason == "eos", "the EOS case stops at the EOS id it was given"

    # text in, text out through the C API (tandem_generate_text): the Python API's text
    for stop in ([], [_stop_inside(model.generate(PROMPT, mode="speed", max_new_tokens=12).text)]):
        run = subprocess.run([str(consumer / "consumer"), "--text", str(pair.bundle), PROMPT, *stop],
                             capture_output=True, env=_clean_env(), timeout=120)
        assert run.returncode == 0, run.stderr
        expected = model.generate(PROMPT, mode="speed", max_new_tokens=12, stop=stop or None)
        assert run.stdout.decode("utf-8") == expected.text
        assert f"finish_reason: {expected.finish_reason}\n" in run.stderr.decode()
        assert expected.finish_reason == ("stop" if stop else "max_new_tokens")
    run = subprocess.run([str(consumer / "consumer"), "--text", str(pair.bundle), b"bad \xff"], capture_output=True,
                         env=_clean_env(), timeout=120)
    assert run.returncode == 1 and b"generate failed (1)" in run.stderr and b"not valid UTF-8" in run.stderr
    # the C++ text API from the installed headers (C++20 comes with the tandem::tandem target)
    run = subprocess.run([str(consumer / "consumer"), "--encode", str(pair.bundle), PROMPT], capture_output=True,
                         text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    ids, text = run.stdout.split("\n", 1)
    assert [int(x) for x in ids.split()] == model.encode(PROMPT)
    assert text == model.decode(model.encode(PROMPT)) + "\n"
    run = subprocess.run([str(consumer / "consumer"), "--encode", str(pair.bundle), b"\xc3"], capture_output=True,
                         env=_clean_env(), timeout=120)
    assert run.returncode == 1 and b"error 1: the text is not valid UTF-8" in run.stderr


PROMPT = "def add(a, b):\n    return"


def _stop_inside(text: str) -> str:
    """Two characters from the middle of `text` that can travel in argv and first occur there."""
    for i in range(len(text) // 2, len(text) - 1):
        stop = text[i:i + 2]
        if "\x00" not in stop and "\ufffd" not in stop and text.find(stop) == i:
            return stop
    pytest.skip(f"no usable stop string in {text!r}")


def _complete() -> Path:
    path = Path(EXAMPLE).parent / "tandem_complete"
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `make cpp` (make test does)")
    return path


@pytest.mark.parametrize(("mode", "gamma", "with_stop"),
                         [("large", 1, False), ("speed", 3, False), ("tandem", 2, False), ("speed", 4, True)])
def test_complete_example_matches_python(pair, mode, gamma, with_stop):
    """tandem_complete streams the text the Python API generates for the same prompt and options."""
    model = load(pair.bundle, threads=1)
    options = dict(mode=mode, block_length=gamma, max_new_tokens=24, ignore_eos=True)
    stop = [_stop_inside(model.generate(PROMPT, **options).text)] if with_stop else []
    expected = model.generate(PROMPT, stop=stop or None, **options)
    cmd = [str(_complete()), str(pair.bundle), "--prompt", PROMPT, "--mode", mode, "--block-length", str(gamma),
           "--max-new-tokens", "24", "--ignore-eos", "--threads", "1", "--ort-library", find_ort_library() or ""]
    for s in stop:
        cmd += ["--stop", s]
    run = subprocess.run(cmd, capture_output=True, env=_clean_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode("utf-8") == expected.text
    assert f"finish_reason: {expected.finish_reason}\n" in run.stderr.decode()
    assert expected.finish_reason == ("stop" if with_stop else "max_new_tokens")


def test_complete_example_reports_errors(pair):
    run = subprocess.run([str(_complete()), str(pair.bundle), "--prompt", b"bad \xff utf-8"], capture_output=True,
                         env=_clean_env(), timeout=120)
    assert run.returncode == 1 and b"not valid UTF-8 (byte 4 of" in run.stderr
    run = subprocess.run([str(_complete()), str(pair.bundle), "--mode", "speed"], capture_output=True, text=True,
                         env=_clean_env(), timeout=120)
    assert run.returncode == 2 and "--prompt is required" in run.stderr
    run = subprocess.run([str(_complete()), str(pair.bundle), "--prompt", "x", "--stop", ""], capture_output=True,
                         text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 1 and "stop strings must be non-empty" in run.stderr
