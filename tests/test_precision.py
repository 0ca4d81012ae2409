"""Bundle precisions (issue 4): fp16, weight-only int8 / int4 bundles run in the C++ loop and
agree with fp32 on argmax; external data; unknown precisions are refused.

The converted bundles are copies of the session `pair` bundle converted graph by graph (no
re-export); one test goes through `export_bundle(precision=...)` end to end.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import Pair

from tandem.errors import ExportError
from tandem.export.large import LargeGraph
from tandem.export.quantize import PRECISIONS, quantize_graph
from tandem.export.small import PlainStepGraph, TandemStepGraph
from tandem.export.validate import CASES, Case, max_abs_diffs
from tandem.manifest import GraphSpec, Manifest
from tandem.runtime import load

QUANTIZED = ("fp16", "int8", "int4")
# Minimum argmax agreement with the fp32 PyTorch module. The tiny random models have
# near-flat logits and K = 32..64 (one or two int4 blocks per column), so int4 is coarse here.
MIN_AGREEMENT = {"fp16": 0.95, "int8": 0.8, "int4": 0.4}
# more positions than the export's validation cases, for a less coarse rate
WIDE_CASES = {
    "large": [Case(32, 0), Case(16, 32), Case(1, 48)],
    "small": [Case(16, 0, 8), Case(8, 24, 8), Case(4, 40, 0)],
    "draft": [Case(32, 0), Case(16, 32), Case(1, 48)],
}
PROMPTS = [[1, 2, 3, 4], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]
NEAR_TIE = 1e-3


def convert_bundle(src: Path, dst: Path, precision: str, **kwargs: int) -> Manifest:
    """A copy of the fp32 bundle `src` with every graph converted to `precision`."""
    shutil.copytree(src, dst)
    manifest = Manifest.load(dst)
    for spec in manifest.graphs.values():
        quantize_graph(dst / spec.file, dst / spec.file, precision, **kwargs)
        spec.precision = precision
    manifest.precision = precision
    manifest.save(dst)
    return manifest


def torch_modules(pair: Pair, manifest: Manifest) -> dict[str, object]:
    return {
        "large": LargeGraph(pair.large, manifest.graphs["large"].rep_layers),
        "small": TandemStepGraph(pair.tandem),
        "draft": PlainStepGraph(pair.plain, pair.plain.router),
    }


@pytest.fixture(scope="module", params=QUANTIZED)
def converted(request: pytest.FixtureRequest, pair: Pair,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    precision = request.param
    dst = tmp_path_factory.mktemp(precision) / "bundle"
    convert_bundle(pair.bundle, dst, precision)
    return precision, dst


def io_types(path: Path) -> list[tuple[str, str]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(p.name, p.type) for p in (*session.get_inputs(), *session.get_outputs())]


def test_io_stays_float32(pair: Pair, converted: tuple[str, Path]):
    """Same I/O names and types as fp32 (the C++ loop binds float32); weights converted."""
    precision, bundle = converted
    manifest = Manifest.load(bundle)
    assert manifest.precision == precision
    for spec in manifest.graphs.values():
        assert spec.precision == precision
        assert io_types(bundle / spec.file) == io_types(pair.bundle / spec.file)
        model = onnx.load(str(bundle / spec.file))
        ops = {node.op_type for node in model.graph.node}
        if precision == "fp16":
            assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        else:
            nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
            assert nbits, f"{spec.file}: no MatMulNBits"
            assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {int(precision[3:])}
            assert "MatMul" in ops  # attention's activation x activation MatMuls stay


def test_argmax_agreement_with_fp32(pair: Pair, converted: tuple[str, Path]):
    precision, bundle = converted
    manifest = Manifest.load(bundle)
    rates = {}
    for role, module in torch_modules(pair, manifest).items():
        spec = manifest.graphs[role]
        diffs = max_abs_diffs(module, bundle / spec.file, spec, CASES[role] + WIDE_CASES[role])
        rates[role] = diffs["argmax_agreement"]
    print(f"\n{precision} argmax agreement with fp32: {rates}")
    for role, rate in rates.items():
        assert rate >= MIN_AGREEMENT[precision], f"{precision} {role}: {rate:.0%} < {MIN_AGREEMENT[precision]:.0%}"


def top2_gap_at(large_onnx: Path, ids: list[int]) -> float:
    """Top-2 logit gap of the (converted) M_L graph at the last of `ids`."""
    spec = Manifest.load(large_onnx.parent).graphs["large"]
    feeds: dict[str, np.ndarray] = {spec.input_ids: np.array([ids], dtype=np.int64)}
    for name in (*spec.past_keys, *spec.past_values):
        feeds[name] = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)
    session = ort.InferenceSession(str(large_onnx), providers=["CPUExecutionProvider"])
    logits = session.run([spec.logits], feeds)[0][0, -1]
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
            gap = top2_gap_at(bundle / "large.onnx", prompt + base.ids[:i])
            assert gap < NEAR_TIE, f"speed != large at token {i}, top-2 gap {gap:.2e}"


@pytest.fixture
def reuse_fp32_graphs(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make export_bundle copy the `pair` bundle's fp32 graphs instead of re-exporting them
    (the dynamo export costs 10-40 s a graph; it is tested in test_foundation)."""
    import tandem.export.bundle as bundle_module

    specs = Manifest.load(pair.bundle).graphs

    def copier(role: str):
        def export(*args: object) -> GraphSpec:
            out_dir = Path(args[-1])  # every export_* takes out_dir last
            shutil.copyfile(pair.bundle / specs[role].file, out_dir / specs[role].file)
            return copy.deepcopy(specs[role])
        return export

    for role, name in (("large", "export_large"), ("small", "export_tandem"), ("draft", "export_plain")):
        monkeypatch.setattr(bundle_module, name, copier(role))


def export_pair(pair: Pair, out: Path, precision: str) -> Manifest:
    from tandem.export.bundle import export_bundle

    return export_bundle(pair.large, out, tandem=pair.tandem, plain=pair.plain, context_length=64,
                         max_block_length=8, precision=precision, progress=None)


def test_export_bundle_records_precision(pair: Pair, tmp_path: Path, reuse_fp32_graphs: None):
    """export_bundle(precision=...): fp32 parity first, then every graph converted, with its
    argmax agreement with the fp32 PyTorch module in the manifest."""
    manifest = export_pair(pair, tmp_path / "int4", "int4")
    assert manifest.precision == "int4"
    assert Manifest.load(tmp_path / "int4").to_json() == manifest.to_json()
    for role, spec in manifest.graphs.items():
        assert spec.precision == "int4"
        check = manifest.validation[role]
        assert check["argmax_agreement"] == 1.0  # fp32 parity, before conversion
        print(f"\nint4 export, {spec.file}: argmax agreement with fp32 {check['argmax_agreement_vs_fp32']:.2f}")
        assert check["argmax_agreement_vs_fp32"] >= MIN_AGREEMENT["int4"]
        assert "MatMulNBits" in {n.op_type for n in onnx.load(str(tmp_path / "int4" / spec.file)).graph.node}
    out = load(tmp_path / "int4", threads=1).generate([1, 2, 3], mode="speed", max_new_tokens=5,
                                                      ignore_eos=True)
    assert len(out.ids) == 5


def test_external_data(pair: Pair, tmp_path: Path):
    """Graphs over the threshold keep their weights in `<graph>.onnx.data` (a bare name inside
    the bundle, which the C++ loader accepts); converting back in place inlines them."""
    bundle = tmp_path / "bundle"
    manifest = convert_bundle(pair.bundle, bundle, "int8", external_data_bytes=0)
    for spec in manifest.graphs.values():
        data = bundle / (spec.file + ".data")
        assert data.is_file()
        model = onnx.load(str(bundle / spec.file), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {data.name}
    prompt = PROMPTS[0]
    external = load(bundle, threads=1).generate(prompt, mode="speed", max_new_tokens=12, ignore_eos=True)
    for spec in manifest.graphs.values():
        quantize_graph(bundle / spec.file, bundle / spec.file, "fp32")  # stays int8, now inline
        assert not (bundle / (spec.file + ".data")).exists()
    inline = load(bundle, threads=1).generate(prompt, mode="speed", max_new_tokens=12, ignore_eos=True)
    assert inline.ids == external.ids
    assert not list(bundle.glob(".quantize-*"))  # no scratch folders left behind


def test_fp16_reads_external_data(pair: Pair, tmp_path: Path):
    """A source graph with external data (as export_graph writes for models over 2 GB)."""
    graph = tmp_path / "large.onnx"
    quantize_graph(pair.bundle / "large.onnx", graph, "fp32", external_data_bytes=0)
    assert (tmp_path / "large.onnx.data").is_file()
    quantize_graph(graph, graph, "fp16", external_data_bytes=0)
    assert (tmp_path / "large.onnx.data").is_file()
    assert io_types(graph) == io_types(pair.bundle / "large.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.onnx", "large.onnx.data"]


def test_unknown_precision(pair: Pair, tmp_path: Path):
    with pytest.raises(ExportError, match="unknown precision 'int3'.*fp32, fp16, int8, int4"):
        quantize_graph(pair.bundle / "large.onnx", tmp_path / "large.onnx", "int3")
    with pytest.raises(ExportError, match="unknown precision 'bf16'"):
        export_pair(pair, tmp_path / "never", "bf16")
    assert not (tmp_path / "never").exists()  # refused before exporting anything
    with pytest.raises(ExportError, match="no ONNX graph"):
        quantize_graph(tmp_path / "missing.onnx", tmp_path / "out.onnx", "int8")


def test_cli_precision_choices():
    from tandem.cli import build_parser

    parser = build_parser(["export"])
    for precision in PRECISIONS:
        args = parser.parse_args(["export", "--large", "m", "--out", "b", "--precision", precision])
        assert args.precision == precision
    assert parser.parse_args(["export", "--large", "m", "--out", "b"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--large", "m", "--out", "b", "--precision", "bf16"])
