"""Bundle precisions: fp16, int8 / int4 (MatMulNBits) bundles built from the same pair as the
session's fp32 bundle; their graphs keep float32 I/O (fp16: a float16 KV cache), their
validation figures land in the manifest, they agree with fp32 on argmax, the C++ loop runs
them losslessly, and unknown precisions are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import Pair
from hf_oracle import hf_outputs

from tandem._core import read_manifest
from tandem.errors import ExportError
from tandem.export.quantize import PRECISIONS
from tandem.export.validate import CASES, Case, case_inputs, graph_feeds, logit_quality, run_graph
from tandem.manifest import FORMAT_VERSION, Manifest
from tandem.runtime import load

QUANTIZED = ("fp16", "int8", "int4")
# Minimum argmax agreement with the fp32 PyTorch model. The tiny random models have
# near-flat logits and K = 32..64 (one or two int4 blocks per column), so int4 is coarse here.
MIN_AGREEMENT = {"fp16": 0.95, "int8": 0.8, "int4": 0.4}
# more positions than the export's validation cases, for a less coarse rate
WIDE_CASES = {
    "large": [Case(32, 0), Case(16, 32), Case(1, 48)],
    "tandem_drafter": [Case(16, 0, 8), Case(8, 24, 8), Case(4, 40, 0)],
    "plain_drafter": [Case(32, 0), Case(16, 32), Case(1, 48)],
}
PROMPTS = [[1, 2, 3, 4], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]
NEAR_TIE = 1e-3


def export_pair(pair: Pair, out: Path, precision: str, **kwargs: object) -> Manifest:
    from tandem.export.bundle import export_bundle

    return export_bundle(pair.large, out, tandem=pair.tandem, plain=pair.plain, context_length=64,
                         max_block_length=8, precision=precision, progress=None, **kwargs)


@pytest.fixture(scope="module", params=QUANTIZED)
def converted(request: pytest.FixtureRequest, pair: Pair,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    precision = request.param
    out = tmp_path_factory.mktemp(precision) / "bundle"
    export_pair(pair, out, precision)
    return precision, out


def io_types(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {p.name: p.type for p in (*session.get_inputs(), *session.get_outputs())}


def test_io_types(pair: Pair, converted: tuple[str, Path]):
    """Same I/O names as fp32, all float32 but the KV cache of fp16 graphs; the weights are
    converted (MatMulNBits with accuracy_level 4 for int8/int4)."""
    precision, bundle = converted
    manifest = read_manifest(str(bundle))
    assert manifest.precision == precision
    for spec in manifest.graphs.values():
        assert spec.precision == precision
        assert spec.kv_dtype == ("float16" if precision == "fp16" else "float32")
        got, fp32 = io_types(bundle / spec.file), io_types(pair.bundle / spec.file)
        kv = set(spec.past_keys + spec.past_values + spec.present_keys + spec.present_values)
        assert got.keys() == fp32.keys()
        for name, kind in got.items():
            assert kind == ("tensor(float16)" if name in kv and precision == "fp16" else fp32[name])
        model = onnx.load(str(bundle / spec.file), load_external_data=False)
        if precision == "fp16":
            assert "MatMul" in {n.op_type for n in model.graph.node}
        else:
            nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
            assert len(nbits) >= 4 * spec.num_layers + 1, f"{spec.file}: linears left unquantized"
            attrs = [{a.name: a.i for a in n.attribute} for n in nbits]
            assert {a["bits"] for a in attrs} == {int(precision[3:])}
            assert {a["accuracy_level"] for a in attrs} == {4}


def test_manifest_records_quality(converted: tuple[str, Path]):
    """The export validated every graph against the fp32 reference and against the reference
    computed with the same (quantized / rounded) weights, and wrote both figures."""
    precision, bundle = converted
    written = json.loads((bundle / "tandem.json").read_text())  # the informational sections
    assert set(written["validation"]) == set(read_manifest(str(bundle)).graphs)
    for role, figures in written["validation"].items():
        assert 0 <= figures["argmax_agreement"] <= 1 and 0 <= figures["top5_overlap"] <= 1
        assert figures["max_rel_error_vs_same_weights"] < figures["logits_rel_error_vs_fp32"] + 0.05
        assert figures["max_rel_error_vs_same_weights"] < 0.1, (role, figures)
    assert written["build"]["accuracy_level"] == (4 if precision in ("int4", "int8") else None)


def test_argmax_agreement_with_fp32(pair: Pair, converted: tuple[str, Path]):
    precision, bundle = converted
    manifest = read_manifest(str(bundle))
    models = {"large": pair.large, "tandem_drafter": pair.tandem, "plain_drafter": pair.plain}
    rates = {}
    for role, spec in manifest.graphs.items():
        cases = [case_inputs(spec, c, seed=i) for i, c in enumerate(CASES[role] + WIDE_CASES[role])]
        got = run_graph(bundle / spec.file, spec, cases)
        want = [hf_outputs(role, models[role], c, spec.rep_layers, router=pair.plain.router) for c in cases]
        rates[role] = logit_quality(got, want)["argmax_agreement"]
    print(f"\n{precision} argmax agreement with fp32: {rates}")
    for role, rate in rates.items():
        assert rate >= MIN_AGREEMENT[precision], f"{precision} {role}: {rate:.0%} < {MIN_AGREEMENT[precision]:.0%}"


def top2_gap_at(bundle: Path, ids: list[int]) -> float:
    """Top-2 logit gap of the bundle's M_L graph at the last of `ids`."""
    from tandem.export.feeds import CaseInputs

    spec = read_manifest(str(bundle)).graphs["large"]
    kv = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)
    inputs = CaseInputs(np.array([ids], dtype=np.int64), [], [(kv, kv)] * spec.num_layers, len(ids) - 1)
    session = ort.InferenceSession(str(bundle / spec.file), providers=["CPUExecutionProvider"])
    logits = session.run([spec.logits], graph_feeds(spec, inputs))[0][0, -1]
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def test_runtime_large_and_speed(converted: tuple[str, Path]):
    """The C++ loop runs converted bundles; speed mode stays lossless w.r.t. the converted M_L
    (equal to large mode, except at a near-tie of the converted M_L)."""
    _, bundle = converted
    model = load(bundle, threads=1)
    for prompt in PROMPTS:
        base = model.generate(prompt, mode="large", max_new_tokens=20, ignore_eos=True)
        got = model.generate(prompt, mode="speed", block_length=4, max_new_tokens=20, ignore_eos=True)
        assert len(base.ids) == len(got.ids) == 20
        assert all(0 <= i < model.vocab_size for i in base.ids)
        if got.ids != base.ids:
            i = next(k for k, (a, b) in enumerate(zip(got.ids, base.ids, strict=True)) if a != b)
            gap = top2_gap_at(bundle, prompt + base.ids[:i])
            assert gap < NEAR_TIE, f"speed != large at token {i}, top-2 gap {gap:.2e}"


def test_accuracy_level_zero(pair: Pair, tmp_path: Path):
    """accuracy_level=0 (float32 compute) is written to every MatMulNBits node's attributes
    (absent = 0) and to the manifest; its graph matches the same-weights reference closely."""
    manifest = export_pair(pair, tmp_path / "b", "int8", accuracy_level=0)
    assert manifest.build["accuracy_level"] == 0
    for role, spec in manifest.graphs.items():
        model = onnx.load(str(tmp_path / "b" / spec.file), load_external_data=False)
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all("accuracy_level" not in {a.name for a in n.attribute} for n in nbits)
        assert manifest.validation[role]["max_rel_error_vs_same_weights"] < 1e-4


def test_unknown_precision(pair: Pair, tmp_path: Path):
    with pytest.raises(ExportError, match="unknown precision 'bf16'.*fp32, fp16, int8, int4"):
        export_pair(pair, tmp_path / "never", "bf16")
    with pytest.raises(ExportError, match="accuracy_level must be one of"):
        export_pair(pair, tmp_path / "never", "int4", accuracy_level=7)
    assert not (tmp_path / "never").exists()  # refused before exporting anything
    assert not list(tmp_path.iterdir())


def test_cli_precision_choices():
    from tandem.cli import build_parser

    parser = build_parser(["export"])
    for precision in PRECISIONS:
        args = parser.parse_args(["export", "--large", "m", "--out", "b", "--precision", precision])
        assert args.precision == precision
    args = parser.parse_args(["export", "--large", "m", "--out", "b"])
    assert args.precision == "fp32" and args.accuracy_level == 4
    assert parser.parse_args(["export", "--large", "m", "--out", "b", "--accuracy-level", "0"]).accuracy_level == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--large", "m", "--out", "b", "--precision", "bf16"])


def test_manifest_is_json_with_figures(converted: tuple[str, Path]):
    _, bundle = converted
    data = json.loads((bundle / "tandem.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert set(data["validation"]) == set(data["graphs"])


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_tied_embeddings_share_the_quantized_head(tmp_path: Path, precision: str):
    """A tied model's int8/int4 graph reads its embedding rows from the LM head's quantized
    weights (GatherBlockQuantized; the router's top-k rows too) and stores no float table;
    the validation reference computes with the same rows, and the loop stays lossless."""
    from tiny_models import tiny_large

    from tandem.export.bundle import export_bundle
    from tandem.train.router import Router, RouterConfig

    large = tiny_large("qwen2", num_layers=2, tie=True)
    plain = tiny_large("qwen2", num_layers=1, tie=True, seed=3)
    plain.router = Router(RouterConfig(embed_dim=plain.config.hidden_size))
    manifest = export_bundle(large, tmp_path / "b", plain=plain, context_length=64, precision=precision,
                             progress=None)
    for role, spec in manifest.graphs.items():
        model = onnx.load(str(tmp_path / "b" / spec.file), load_external_data=False)
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("GatherBlockQuantized") == (2 if spec.router_score_greedy else 1)
        assert "Gather" not in ops
        tables = [t for t in model.graph.initializer if list(t.dims) == [spec.vocab_size, spec.hidden_size]]
        assert tables == [], "a float embedding table is stored"
        assert manifest.validation[role]["max_rel_error_vs_same_weights"] < 0.1
    runtime = load(tmp_path / "b", threads=1)
    for prompt in PROMPTS:
        base = runtime.generate(prompt, mode="large", max_new_tokens=16, ignore_eos=True)
        assert runtime.generate(prompt, mode="vanilla", block_length=3, max_new_tokens=16,
                                ignore_eos=True).ids == base.ids


def _logits_by_chunks(bundle: Path, ids: list[int], chunks: list[int]) -> np.ndarray:
    """M_L's logits of every position of `ids`, computed in calls of `chunks` tokens through
    one shared KV buffer (as the C++ loop binds it)."""
    spec = read_manifest(str(bundle)).graphs["large"]
    session = ort.InferenceSession(str(bundle / spec.file), providers=["CPUExecutionProvider"])
    dtype = np.float16 if spec.kv_dtype == "float16" else np.float32
    rows = len(ids) + spec.kv_scratch_rows
    binding = session.io_binding()
    buffers = []
    for past, present in zip(spec.past_keys + spec.past_values, spec.present_keys + spec.present_values, strict=True):
        buffers.append(ort.OrtValue.ortvalue_from_numpy(np.zeros((1, spec.num_kv_heads, rows, spec.head_dim), dtype)))
        binding.bind_ortvalue_input(past, buffers[-1])
        binding.bind_ortvalue_output(present, buffers[-1])
    out, start = [], 0
    for n in chunks:
        binding.bind_cpu_input(spec.input_ids, np.array([ids[start:start + n]], dtype=np.int64))
        binding.bind_cpu_input(spec.seqlens_k, np.array([start + n - 1], dtype=np.int32))
        binding.bind_cpu_input(spec.total_sequence_length, np.array(start + n, dtype=np.int32))
        binding.bind_cpu_input(spec.logits_from, np.array([0], dtype=np.int64))
        binding.bind_output(spec.logits)  # bound last: the last output
        session.run_with_iobinding(binding)
        out.append(binding.get_outputs()[-1].numpy()[0])
        start += n
    return np.concatenate(out)


def test_one_token_steps_equal_block_rows_bit_for_bit(pair: Pair, converted: tuple[str, Path]):
    """M_L computes a position's logits bit for bit the same in a one-token step as inside a
    block of any size, fp32 and every other precision (int8-compute kernels included): what
    makes greedy speed/vanilla equal large exactly."""
    ids = list(range(3, 40, 2))
    for bundle in (pair.bundle, converted[1]):
        base = _logits_by_chunks(bundle, ids, [len(ids)])
        for chunks in ([12, 1, 1, 1, 1, 1, 1, 1], [12, 3, 4], [1] * len(ids), [2, 5, 1, 11]):
            assert np.array_equal(_logits_by_chunks(bundle, ids, chunks), base), (bundle, chunks)


def test_quantized_reference_is_the_graphs_m_l(tmp_path: Path):
    """scripts/quantized_reference.py writes the Hugging Face folder whose float weights are the
    ones an int4 graph computes with: PyTorch on it gives the exported graph's logits (up to float
    rounding and the graph's int8 activations), far closer than the original model does."""
    import subprocess
    import sys

    from tiny_models import tiny_large_folder

    from tandem.train.reps import OrtEngine, TorchEngine

    src = tiny_large_folder(tmp_path / "large", "llama", num_layers=2)  # tied embeddings
    precision = "int4"
    ref = tmp_path / f"large-{precision}"
    script = Path(__file__).resolve().parents[1] / "scripts" / "quantized_reference.py"
    subprocess.run([sys.executable, str(script), "--large", str(src), "--out", str(ref), "--precision", precision],
                   check=True, capture_output=True)
    ids = np.random.default_rng(0).integers(0, 200, (1, 24))
    _, graph = OrtEngine(src, tmp_path / "graph", [], precision, 32, threads=1, progress=False)(ids, [], True)
    _, quantized = TorchEngine(ref)(ids, [], True)
    _, original = TorchEngine(src)(ids, [], True)
    near = (quantized - graph).abs().mean().item()
    far = (original - graph).abs().mean().item()
    assert near < far / 4, (near, far)  # measured: 0.036 vs 0.58
    agree = {name: (x.argmax(-1) == graph.argmax(-1)).float().mean().item()
             for name, x in (("quantized", quantized), ("original", original))}
    assert agree["quantized"] > agree["original"], agree  # measured: 0.96 vs 0.54


@pytest.mark.parametrize("bits", [8, 4])
def test_block_quantization_rounds_each_block_to_its_own_scale(bits: int):
    """quantize_blocks at every block size: packed `[N, K/B, B·bits/8]`, one scale per block
    (K padded to whole blocks), and dequantize_blocks (which reads B from the packed shape)
    gives back every weight within one step of its block's scale (round to nearest, the
    largest magnitude possibly clipped at the end of the signed range), most within half."""
    from tandem.export.quantize import (
        BLOCK_SIZES,
        dequantize_blocks,
        quantize_blocks,
        stored_weight,
    )

    rng = np.random.default_rng(0)
    n, k = 24, 200  # K a multiple of none of the sizes above 8
    weight = rng.standard_normal((n, k)).astype(np.float32)
    for size in BLOCK_SIZES:
        packed, scales = quantize_blocks(weight, bits, size)
        blocks = -(-k // size)
        assert packed.shape == (n, blocks, size * bits // 8) and scales.shape == (n, blocks)
        back = dequantize_blocks(packed, scales, k, bits)
        assert back.shape == (n, k)
        per_weight_scale = np.repeat(np.abs(scales), size, axis=1)[:, :k]
        error = np.abs(back - weight)
        assert np.all(error <= per_weight_scale + 1e-6)
        assert np.mean(error <= per_weight_scale / 2 + 1e-6) > 0.95
        np.testing.assert_array_equal(stored_weight(weight, f"int{bits}", size), back)
    with pytest.raises(ExportError, match="block_size must be one of"):
        quantize_blocks(weight, bits, 48)


def test_export_at_block_size_64(pair: Pair, tmp_path: Path):
    """--block-size 64: every MatMulNBits and GatherBlockQuantized node quantizes in blocks of
    64, the export's validation (same-weights reference at that block size) passes, the
    manifest records it, and the loop stays lossless."""
    manifest = export_pair(pair, tmp_path / "b", "int4", block_size=64)
    assert manifest.build["block_size"] == 64
    for role, spec in manifest.graphs.items():
        model = onnx.load(str(tmp_path / "b" / spec.file), load_external_data=False)
        quantized = [n for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
        assert quantized and all(
            next(a.i for a in n.attribute if a.name == "block_size") == 64 for n in quantized), role
        assert manifest.validation[role]["max_rel_error_vs_same_weights"] < 0.1
    model = load(tmp_path / "b", threads=1)
    for prompt in PROMPTS:
        base = model.generate(prompt, mode="large", max_new_tokens=16, ignore_eos=True)
        got = model.generate(prompt, mode="speed", block_length=3, max_new_tokens=16, ignore_eos=True)
        if got.ids != base.ids:
            i = next(k for k, (a, b) in enumerate(zip(got.ids, base.ids, strict=True)) if a != b)
            assert top2_gap_at(tmp_path / "b", prompt + base.ids[:i]) < NEAR_TIE


def test_block_size_is_refused_where_it_does_not_apply(pair: Pair, tmp_path: Path):
    from tandem.cli import main

    with pytest.raises(ExportError, match="block_size must be one of"):
        export_pair(pair, tmp_path / "never", "int4", block_size=48)
    with pytest.raises(ExportError, match="block_size 64 applies to int8/int4 .* not fp16"):
        export_pair(pair, tmp_path / "never", "fp16", block_size=64)
    assert not (tmp_path / "never").exists()
    assert main(["export", "--large", str(pair.large), "--out", str(tmp_path / "never"), "--block-size", "64"]) != 0
    assert not (tmp_path / "never").exists()
