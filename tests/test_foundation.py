"""The walking skeleton: package import, the graph builder against Hugging Face (every output,
prefill and cached chunks, memory chunks), the validation reference against Hugging Face, and
C++ greedy == transformers greedy."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hf_oracle import hf_outputs
from tiny_models import tiny_large

from tandem._core import read_manifest
from tandem.export.checkpoint import Checkpoint
from tandem.export.reference import Reference
from tandem.export.validate import LARGE_CASES, SMALL_CASES, Case, case_inputs, compare, run_graph
from tandem.train.model import create_drafter_config, create_tandem
from tandem.train.router import Router, RouterConfig

TOL = 1e-4  # max|Δ| ≤ TOL · max(1, max|ref|), per output


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
    "llama": dict(num_kv_heads=2),                      # GQA, untied
    "qwen2": dict(num_kv_heads=2, tie=True),            # q/k/v biases, tied embeddings
    "mistral": dict(num_kv_heads=4, sliding_window=5),  # MHA, sliding window (shorter than the cases)
}


def test_every_supported_arch_has_a_fixture():
    from tiny_models import ARCHITECTURES

    from tandem.export.decoder import SUPPORTED

    assert set(SUPPORTED) == set(ARCHITECTURES) == set(ARCHS)


@dataclass
class Exported:
    large: object
    tandem: object
    plain: object
    folder: Path


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """All three graphs of one architecture: M_L with reps of layers 0, 2 and 3 (embedding,
    middle, last), a 2-layer tandem M_S with router, and M_S's backbone as a plain drafter
    with its own router."""
    from tandem.export.bundle import export_bundle

    arch = request.param
    large = tiny_large(arch, num_layers=3, seed=11, **ARCHS[arch])
    cfg = create_drafter_config(large.config, num_layers=3, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, layer_assignment="0,2,3")
    plain = tandem.small
    plain.router = Router(RouterConfig(embed_dim=32))
    folder = tmp_path_factory.mktemp(arch) / "bundle"
    export_bundle(large, folder, tandem=tandem, plain=plain, context_length=64, progress=None)
    return Exported(large, tandem, plain, folder)


def _oracle(exported: Exported, role: str, spec, inputs) -> dict[str, np.ndarray]:
    model = {"large": exported.large, "tandem_drafter": exported.tandem, "plain_drafter": exported.plain}[role]
    return hf_outputs(role, model, inputs, spec.rep_layers, router=exported.plain.router)


PARITY_CASES = {
    "large": [*LARGE_CASES, Case(5, 3), Case(1, 12), Case(7, 9, logits_from=6)],
    "tandem_drafter": [*SMALL_CASES, Case(2, 0, 0), Case(4, 3, 6), Case(1, 11, 2)],
    "plain_drafter": [*LARGE_CASES, Case(3, 10, logits_from=2)],
}


def _check(got: list[dict], want: list[dict], what: str) -> None:
    for name, s in compare(got, want).items():
        assert s["max_abs_diff"] <= TOL * max(1.0, s["max_abs_ref"]), (what, name, s)


@pytest.mark.parametrize("role", ["large", "tandem_drafter", "plain_drafter"])
def test_graph_parity(exported: Exported, role: str):
    """ONNX Runtime vs Hugging Face on every output (logits, present K/V, representations,
    router score): prefill and cached chunks of 1 and several tokens, memory chunks of 0, 1
    and several rows, logits of the last rows only; past K/V in buffers as long as the call."""
    spec = read_manifest(str(exported.folder)).graphs[role]
    cases = [case_inputs(spec, case, seed=i) for i, case in enumerate(PARITY_CASES[role])]
    got = run_graph(exported.folder / spec.file, spec, cases)
    want = [_oracle(exported, role, spec, c) for c in cases]
    assert set(got[0]) == set(want[0])  # every output compared
    _check(got, want, spec.file)


@pytest.mark.parametrize("role", ["large", "tandem_drafter", "plain_drafter"])
def test_reference_matches_hugging_face(exported: Exported, role: str):
    """The export's validation oracle (streamed PyTorch) equals Hugging Face."""
    spec = read_manifest(str(exported.folder)).graphs[role]
    model = {"large": exported.large, "tandem_drafter": exported.tandem, "plain_drafter": exported.plain}[role]
    cases = [case_inputs(spec, case, seed=i) for i, case in enumerate(PARITY_CASES[role])]
    reference = Reference(Checkpoint.from_module(model), context_length=64)
    got = [r["fp32"] for r in reference.run(role, cases, spec.rep_layers)]
    want = [_oracle(exported, role, spec, c) for c in cases]
    assert set(got[0]) == set(want[0])
    _check(got, want, f"reference {role}")


def test_graph_shape(exported: Exported):
    """ONNX Runtime's fused decoder path: one GroupQueryAttention per layer over the shared
    KV buffer (no KV Concat), skip+RMS norms fused, QKV and gate/up fused; the M_L graph has
    no more nodes than that needs."""
    manifest = read_manifest(str(exported.folder))
    for role, spec in manifest.graphs.items():
        graph = onnx.load(str(exported.folder / spec.file), load_external_data=False).graph
        ops = [n.op_type for n in graph.node]
        layers = spec.num_layers
        assert ops.count("GroupQueryAttention") == layers
        assert ops.count("SkipSimplifiedLayerNormalization") == (2 * layers if role != "tandem_drafter" else layers + 1)
        routed = bool(spec.router_score_greedy)
        assert ops.count("MatMul") == 4 * layers + 1 + (layers if role == "tandem_drafter" else 0) + (
            4 if routed else 0)  # qkv, o, gate_up, down per layer; head; W_T; two router MLPs
        # the routers' features are computed once for both heads
        assert ops.count("Concat") == (layers if role == "tandem_drafter" else 0) + (1 if routed else 0)
        assert ops.count("TopK") == (1 if routed else 0)
        if role == "large":
            assert len(ops) <= 14 * layers + 12
        inputs = {i.name for i in graph.input}
        assert {spec.seqlens_k, spec.total_sequence_length, spec.logits_from} <= inputs


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
