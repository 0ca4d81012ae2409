"""Export validation: run a built graph in ONNX Runtime and the streamed PyTorch reference
on the same short cases, and judge the difference by the graph's precision.

- fp32 graphs must match the reference within `max|Δ| ≤ 1e-4 · max(1, max|ref|)` for every
  output (logits, present K/V, representations, router scores), so a model whose logits run
  to ±30 gets a tolerance of 3e-3 there.
- int8 / int4 graphs: the same graph with its MatMulNBits computing in float32 must match the
  reference computed with the same (dequantized) weights within that tolerance: an exact
  check of wiring and weights. The graph as built (int8 activations by default) is compared
  with the float32 reference for the quality figures (argmax agreement, top-5 overlap,
  relative logit error) recorded in the manifest, and never judged by them: how far int8
  rounding drifts depends on the model and the inputs, not on a bug.
- fp16 graphs: against the reference computed with the fp16-rounded weights, by relative error.

A failing check names the tensor (and so the layer) that diverges first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ExportError
from tandem.export.checkpoint import Checkpoint
from tandem.export.feeds import CaseInputs, graph_feeds, random_inputs
from tandem.export.quantize import DEFAULT_BLOCK_SIZE
from tandem.manifest import GraphSpec

FP32_TOLERANCE = 1e-4  # max|Δ| / max(1, max|ref|)
# fp16 graphs: relative L2 error vs the same-weights reference above which a graph is judged
# wrong (float16 rounding stays far below: 9e-3 on a trained 30-layer model; a wiring bug
# gives errors of order 1). int8/int4 graphs are judged by their float32-compute twin.
BUG_REL_ERROR = {"fp16": 0.05}


@dataclass
class Case:
    """One call: `t` new ids, `m` memory rows (tandem drafter only), past length `P`."""

    t: int
    P: int
    m: int = 0
    logits_from: int = 0

    @property
    def name(self) -> str:
        return f"t={self.t},P={self.P}" + (f",m={self.m}" if self.m else "") + (
            f",logits_from={self.logits_from}" if self.logits_from else "")


# prefill, cached chunks of 1 and several tokens; memory chunks of 0, 1 and several rows. The
# cached cases' past K/V are random: they check the arithmetic, not quality; the quality
# figures come from the prefill cases (no past), where every value is the model's own.
LARGE_CASES = [Case(6, 0), Case(1, 6), Case(4, 7), Case(5, 3, logits_from=4), Case(48, 0)]
SMALL_CASES = [Case(1, 0, 5), Case(1, 5, 0), Case(1, 6, 1), Case(3, 7, 4)]
CASES = {"large": LARGE_CASES, "tandem_drafter": SMALL_CASES, "plain_drafter": LARGE_CASES}


# Text for the quality figures when the bundle has a tokenizer: the longest prefill case reads
# its tokens (random ids make flat, easily flipped distributions, far from real use).
QUALITY_TEXT = (
    "The river rose through the night, and by morning the old bridge was under water. People "
    "gathered on the hill to watch, sharing bread and news while the children counted boats.\n\n"
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
    "    return total / len(values)\n"
)


def case_inputs(spec: GraphSpec, case: Case, seed: int = 0, ids: list[int] | None = None) -> CaseInputs:
    """Seeded random ids, memory rows and past K/V for one case; `ids` replaces the ids."""
    inputs = random_inputs(spec, case.t, case.P, case.m, seed, case.logits_from)
    if ids is not None:
        inputs.ids = np.asarray([ids[:case.t]], dtype=np.int64)
    return inputs


def text_ids(tokenizer_file: Path | None, vocab_size: int) -> list[int] | None:
    """`QUALITY_TEXT` in the bundle's tokens, or None without a usable tokenizer."""
    if tokenizer_file is None:
        return None
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_file)).encode(QUALITY_TEXT).ids
    return ids if ids and max(ids) < vocab_size else None


def run_graph(path: Path, spec: GraphSpec, cases: list[CaseInputs], threads: int = 0) -> list[dict[str, np.ndarray]]:
    """The graph's outputs per case, by the reference's names (`present.{i}.key`, ...)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if spec.precision in ("fp32", "fp16"):
        # a few calls only: no prepacked copy of the float weights (memory and load time);
        # MatMulNBits keeps its prepacking, which decides the kernels it runs
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load the built {path.name}: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    rename = {p: f"present.{i}.key" for i, p in enumerate(spec.present_keys)}
    rename.update({p: f"present.{i}.value" for i, p in enumerate(spec.present_values)})
    rename.update({spec.logits: "logits", spec.router_score_greedy: "router_score_greedy",
                   spec.router_score_sampled: "router_score_sampled"})
    results = []
    for inputs in cases:
        feeds = graph_feeds(spec, inputs)
        outputs = session.run(names, feeds)
        total = int(feeds[spec.total_sequence_length])
        result = {rename.get(n, n): o.astype(np.float32) for n, o in zip(names, outputs, strict=True)}
        for i in range(spec.num_layers):  # the valid rows of the KV buffers
            for kind in ("key", "value"):
                result[f"present.{i}.{kind}"] = result[f"present.{i}.{kind}"][:, :, :total]
        results.append(result)
    return results


def _order(name: str) -> tuple[float, str]:
    """Graph order of an output: rep.l after layer l-1's K/V; logits and router last."""
    if name.startswith("present."):
        return float(name.split(".")[1]), name
    if name.startswith("rep."):
        return float(name.split(".")[1]) - 0.5, name
    return float("inf"), name


def compare(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per output name (over all cases): max |Δ|, max |ref| and relative L2 error."""
    stats: dict[str, dict[str, float]] = {}
    for g, w in zip(got, want, strict=True):
        for name in sorted(w, key=_order):
            a, b = g[name], w[name]
            if a.shape != b.shape:
                raise ExportError(f"output {name} has shape {a.shape}, the reference {b.shape}; the export is wrong")
            s = stats.setdefault(name, {"max_abs_diff": 0.0, "max_abs_ref": 0.0, "sq_diff": 0.0, "sq_ref": 0.0})
            if a.size:
                diff = np.abs(a.astype(np.float64) - b)
                if not np.isfinite(diff).all():  # NaN / inf in the graph's output: never within tolerance
                    diff = np.full(1, np.inf)
                s["max_abs_diff"] = max(s["max_abs_diff"], float(diff.max()))
                s["max_abs_ref"] = max(s["max_abs_ref"], float(np.max(np.abs(b))))
                s["sq_diff"] += float(np.sum(diff ** 2))
                s["sq_ref"] += float(np.sum(b.astype(np.float64) ** 2))
    for s in stats.values():
        s["rel_l2"] = (s.pop("sq_diff") / max(s.pop("sq_ref"), 1e-30)) ** 0.5
    return stats


def logit_quality(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Argmax agreement and top-5 overlap of the graph's logits with the reference's."""
    agree, overlap, rows = 0, 0.0, 0
    for g, w in zip(got, want, strict=True):
        a, b = g["logits"][0], w["logits"][0]  # [r, V]
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        top_a, top_b = np.argsort(-a, axis=-1)[:, :5], np.argsort(-b, axis=-1)[:, :5]
        overlap += sum(len(set(x) & set(y)) / 5 for x, y in zip(top_a, top_b, strict=True))
        rows += a.shape[0]
    return {"argmax_agreement": agree / max(rows, 1), "top5_overlap": overlap / max(rows, 1)}


def _first_failure(stats: dict[str, dict[str, float]], ok: Any) -> str | None:
    for name in sorted(stats, key=_order):
        if not ok(stats[name]):
            return name
    return None


def _float_compute_copy(path: Path) -> Path:
    """A copy of the int8/int4 graph at `path` whose MatMulNBits compute in float32
    (accuracy_level removed), written next to it so it reads the same weights file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            keep = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(keep)
    copy = path.with_name(f".{path.stem}.float-compute.onnx")
    copy.write_bytes(model.SerializeToString())
    return copy


def _raise_first(path: Path, stats: dict[str, dict[str, float]], what: str) -> None:
    def ok(s: dict[str, float]) -> bool:
        return s["max_abs_diff"] <= FP32_TOLERANCE * max(1.0, s["max_abs_ref"])

    bad = _first_failure(stats, ok)
    if bad:
        s = stats[bad]
        raise ExportError(
            f"{path.name} disagrees with the PyTorch reference{what} first at {bad}: max |Δ| = {s['max_abs_diff']:.3g} "
            f"> {FP32_TOLERANCE:g} · max(1, max|ref| = {s['max_abs_ref']:.3g}); the export is wrong, please report it")


def validate_graph(path: Path, spec: GraphSpec, ckpt: Checkpoint, role: str, *, precision: str,
                   context_length: int, threads: int = 0, text: list[int] | None = None,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, Any]:
    """Check the graph at `path` against the reference; returns the figures for the manifest.

    Raises ExportError naming the first diverging output when a bug is likely:
    - fp32: every output within `FP32_TOLERANCE` of its scale;
    - int8/int4: the same graph computing in float32 (accuracy_level 0) must match the
      reference computed with the same quantized weights within that tolerance: that checks
      the graph's wiring and weights exactly, whatever int8 activation rounding does over
      many layers (which depends on the inputs: on a trained 30-layer model it reaches a
      relative error of 0.3 on random inputs, with no harm to its output quality);
    - fp16: within a relative error of `BUG_REL_ERROR["fp16"]` of the same-weights reference.
    The graph as built is compared with the float32 model for the quality figures, on the
    prefill cases; the longest reads `text` (token ids) when given.
    """
    chosen = [c for c in CASES[role] if c.P + c.m + c.t <= context_length]  # cases that fit the context
    longest = max(range(len(chosen)), key=lambda i: chosen[i].t)
    use_text = text is not None and len(text) >= chosen[longest].t and chosen[longest].P == 0
    cases = [case_inputs(spec, case, seed=i, ids=text if use_text and i == longest else None)
             for i, case in enumerate(chosen)]
    from tandem.export.reference import Reference  # torch: only validation needs it

    variants = ("fp32",) if precision == "fp32" else ("fp32", precision)
    reference = Reference(ckpt, variants, context_length=context_length, block_size=block_size)
    want = reference.run(role, cases, spec.rep_layers)
    got = run_graph(path, spec, cases, threads)
    exact = compare(got, [w["fp32"] for w in want])
    prefill = [i for i, c in enumerate(chosen) if c.P == 0] if role != "tandem_drafter" else range(len(cases))
    figures: dict[str, Any] = {"cases": [c.name for c in chosen], "quality_text": use_text,
                               **logit_quality([got[i] for i in prefill], [want[i]["fp32"] for i in prefill])}
    if precision == "fp32":
        figures["max_abs_diff"] = {n: s["max_abs_diff"] for n, s in exact.items()}
        figures["max_rel_diff"] = max(s["max_abs_diff"] / max(1.0, s["max_abs_ref"]) for s in exact.values())
        _raise_first(path, exact, "")
        return figures
    same = compare(got, [w[precision] for w in want])
    figures["logits_rel_error_vs_fp32"] = exact["logits"]["rel_l2"]
    figures["max_rel_error_vs_same_weights"] = max(s["rel_l2"] for s in same.values())
    figures["rel_error_vs_same_weights"] = {n: s["rel_l2"] for n, s in same.items()}
    if precision in BUG_REL_ERROR:  # fp16: no float32-compute twin
        limit = BUG_REL_ERROR[precision]
        bad = _first_failure(same, lambda s: s["rel_l2"] <= limit)
        if bad:
            raise ExportError(
                f"{path.name} ({precision}) disagrees with the PyTorch reference computed with the same {precision} "
                f"weights first at {bad}: relative error {same[bad]['rel_l2']:.3g} > {limit}; rounding alone stays "
                "far below that, so the export is wrong, please report it")
        return figures
    twin = _float_compute_copy(path)
    try:
        float_compute = run_graph(twin, spec, cases, threads)
    finally:
        twin.unlink(missing_ok=True)
    wiring = compare(float_compute, [w[precision] for w in want])
    figures["max_rel_diff_float_compute_vs_same_weights"] = max(
        s["max_abs_diff"] / max(1.0, s["max_abs_ref"]) for s in wiring.values())
    _raise_first(path, wiring, f" computed with the same {precision} weights (MatMulNBits in float32)")
    return figures
