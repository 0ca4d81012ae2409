"""The walking skeleton: package import, export parity, C++ greedy == transformers greedy."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_large

from tandem.export.large import LargeGraph
from tandem.export.small import PlainStepGraph, TandemStepGraph
from tandem.export.validate import LARGE_CASES, SMALL_CASES, Case, max_abs_diffs
from tandem.train.model import create_drafter_config, create_tandem

TOL = 1e-4


def test_import_tandem_does_not_import_torch():
    code = "import sys, tandem, tandem.runtime; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "tandem.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "export", "train", "eval"):
        assert command in out.stdout
    out = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--block-length" in out.stdout


ARCHS = {
    "llama": dict(num_kv_heads=2),            # GQA, untied
    "qwen2": dict(num_kv_heads=2, tie=True),  # q/k/v biases, tied embeddings
    "mistral": dict(num_kv_heads=4),          # MHA
}


def test_every_supported_arch_has_a_fixture():
    from tiny_models import ARCHITECTURES

    from tandem.export.arch import SUPPORTED

    assert set(SUPPORTED) == set(ARCHITECTURES) == set(ARCHS)


@dataclass
class Exported:
    large: object
    tandem: object
    folder: Path


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """All three graphs of one architecture, exported once: M_L with reps of layers 1 and 3,
    a 2-layer tandem M_S with router, and M_S's backbone as a plain drafter."""
    from tandem.export.bundle import export_bundle

    arch = request.param
    large = tiny_large(arch, num_layers=3, seed=11, **ARCHS[arch])
    cfg = create_drafter_config(large.config, num_layers=2, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, layer_assignment="proportional")
    folder = tmp_path_factory.mktemp(arch)
    export_bundle(large, folder, tandem=tandem, plain=tandem.small, validate=False, progress=None)
    return Exported(large, tandem, folder)


def _worst(diffs: dict[str, float]) -> float:
    return max(v for k, v in diffs.items() if k != "argmax_agreement")


def test_graph_parity(exported: Exported):
    """ORT vs PyTorch on every output (logits, present K/V, representations, router score):
    prefill and cached chunks of 1 and several tokens; memory chunks of 0, 1 and several."""
    from tandem.manifest import Manifest

    graphs = Manifest.load(exported.folder).graphs
    assert graphs["large"].rep_layers == exported.tandem.config.large_layers
    large = LargeGraph(exported.large, graphs["large"].rep_layers)
    checks = [
        (large, graphs["large"], [*LARGE_CASES, Case(5, 3)]),
        (TandemStepGraph(exported.tandem), graphs["small"], [*SMALL_CASES, Case(2, 0, 0), Case(4, 3, 6)]),
        (PlainStepGraph(exported.tandem.small, None), graphs["draft"], LARGE_CASES),
    ]
    for module, spec, cases in checks:
        diffs = max_abs_diffs(module, exported.folder / spec.file, spec, cases)
        assert {c.name for c in cases} <= diffs.keys()
        assert _worst(diffs) <= TOL, (spec.file, diffs)
        assert diffs["argmax_agreement"] == 1.0


def test_cpp_greedy_equals_transformers(exported: Exported):
    from tandem.runtime import load

    model = load(exported.folder, threads=1)
    for prompt in ([1, 2, 3], [7], list(range(40, 70))):
        got = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True)
        expected = exported.large.generate(
            torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, len(prompt):].tolist()
        assert got.ids == expected
        assert got.finish_reason == "max_new_tokens"
        assert got.stats["large_calls"] == 24
