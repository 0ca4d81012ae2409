"""The C++ bundle readers (manifest parser, graph loader with its external-data scan,
tokenizer.json with encoding and decoding, C API) on malformed copies of a real bundle: cpp/tests/fuzz_bundle.cpp, a deterministic mutation
fuzzer. `make sanitize` runs it under ASan + UBSan (TANDEM_FUZZ_BIN, more inputs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = os.environ.get("TANDEM_FUZZ_BIN", str(ROOT / "build/cpp/cpp/tandem_fuzz_bundle"))
ITERATIONS = int(os.environ.get("TANDEM_FUZZ_ITERATIONS", "300"))


# `self_draft_pair`: a drafter that is M_L itself, whose graph reads M_L's embedding and head
# from large.onnx.data (tensors stored once per bundle): cross-file references get damaged too.
@pytest.mark.parametrize(("bundle", "seed"), [("pair", 1), ("pair", 2), ("self_draft_pair", 3)])
def test_cpp_bundle_readers_survive_malformed_bundles(request, tmp_path, bundle, seed):
    if not Path(FUZZ).is_file():
        pytest.skip(f"{FUZZ} not built (make cpp)")
    folder = request.getfixturevalue(bundle).bundle
    if bundle == "self_draft_pair":
        assert b"large.onnx.data" in (folder / "plain_drafter.onnx").read_bytes(), "the seed has no cross-file reference"
    out = subprocess.run([FUZZ, str(folder), str(tmp_path), str(ITERATIONS), str(seed)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    assert f"{ITERATIONS} inputs:" in out.stdout
    # the mutations hit both outcomes: some inputs still load, most are refused
    refused = int(out.stdout.split(" loaded, ")[1].split(" refused")[0])
    assert 0 < refused < ITERATIONS, out.stdout
    assert (folder / "tokenizer.json").is_file(), "the seed bundle ships no tokenizer"
    tok_loaded, tok_refused = (int(x.split()[0]) for x in out.stdout.split("tokenizer.json: ")[1].split(", ")[:2])
    assert tok_loaded > 0 and tok_refused > 0, out.stdout
    # damaged bundles that still load decode adaptively too, reading each router's score output
    assert int(out.stdout.split("; ")[-1].split()[0]) > 0, out.stdout
