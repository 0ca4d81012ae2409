"""Export validation: run a built graph in ONNX Runtime and the streamed PyTorch reference
on the same short cases, and judge the difference by the graph's precision.

- fp32 graphs must match the reference within `max|Δ| ≤ 1e-4 · max(1, max|ref|)` for every
  output (logits, present K/V, representations, router score), so a model whose logits run
  to ±30 gets a tolerance of 3e-3 there.
- Quantized / fp16 graphs are compared twice: against the reference computed with the same
  (dequantized / rounded) weights, where only activation rounding differs (a large error
  there means a bug), and against the float32 reference, which gives the quality figures
  (argmax agreement, top-5 overlap, relative logit error) recorded in the manifest.

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
from tandem.export.reference import Reference
from tandem.manifest import GraphSpec

FP32_TOLERANCE = 1e-4  # max|Δ| / max(1, max|ref|)
# Relative L2 error vs the same-weights reference above which a graph is judged wrong.
# Activation rounding stays far below (fp16 ~1e-3; int8 activations at accuracy_level 4 a
# few 1e-2 on random-weight models); a wiring bug gives errors of order 1.
BUG_REL_ERROR = {"fp16": 0.05, "int8": 0.25, "int4": 0.25}


@dataclass
class Case:
    """One call: `t` new ids, `m` memory rows (small graph only), past length `P`."""

    t: int
    P: int
    m: int = 0
    logits_from: int = 0

    @property
    def name(self) -> str:
        return f"t={self.t},P={self.P}" + (f",m={self.m}" if self.m else "") + (
            f",logits_from={self.logits_from}" if self.logits_from else "")


# prefill, cached chunks of 1 and several tokens; memory chunks of 0, 1 and several rows
LARGE_CASES = [Case(6, 0), Case(1, 6), Case(4, 7), Case(5, 3, logits_from=4)]
SMALL_CASES = [Case(1, 0, 5), Case(1, 5, 0), Case(1, 6, 1), Case(3, 7, 4)]
CASES = {"large": LARGE_CASES, "small": SMALL_CASES, "draft": LARGE_CASES}


def case_inputs(spec: GraphSpec, case: Case, seed: int = 0) -> CaseInputs:
    """Seeded random ids, memory rows and past K/V for one case."""
    return random_inputs(spec, case.t, case.P, case.m, seed, case.logits_from)


def run_graph(path: Path, spec: GraphSpec, cases: list[CaseInputs], threads: int = 0) -> list[dict[str, np.ndarray]]:
    """The graph's outputs per case, by the reference's names (`present.{i}.key`, ...)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load the built {path.name}: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    rename = {p: f"present.{i}.key" for i, p in enumerate(spec.present_keys)}
    rename.update({p: f"present.{i}.value" for i, p in enumerate(spec.present_values)})
    rename.update({spec.logits: "logits", spec.router_score: "router_score"})
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


def validate_graph(path: Path, spec: GraphSpec, ckpt: Checkpoint, role: str, *, precision: str,
                   context_length: int, threads: int = 0) -> dict[str, Any]:
    """Check the graph at `path` against the reference; returns the figures for the manifest.

    Raises ExportError naming the first diverging output when a bug is likely."""
    cases = [case_inputs(spec, case, seed=i) for i, case in enumerate(CASES[role])]
    variants = ("fp32",) if precision == "fp32" else ("fp32", precision)
    reference = Reference(ckpt, variants, context_length=context_length)
    want = reference.run(role, cases, spec.rep_layers)
    got = run_graph(path, spec, cases, threads)
    exact = compare(got, [w["fp32"] for w in want])
    figures: dict[str, Any] = {"cases": [c.name for c in CASES[role]], **logit_quality(got, [w["fp32"] for w in want])}
    if precision == "fp32":
        def ok(s: dict[str, float]) -> bool:
            return s["max_abs_diff"] <= FP32_TOLERANCE * max(1.0, s["max_abs_ref"])

        figures["max_abs_diff"] = {n: s["max_abs_diff"] for n, s in exact.items()}
        figures["max_rel_diff"] = max(s["max_abs_diff"] / max(1.0, s["max_abs_ref"]) for s in exact.values())
        bad = _first_failure(exact, ok)
        if bad:
            s = exact[bad]
            raise ExportError(
                f"{path.name} disagrees with the PyTorch reference first at {bad}: max |Δ| = {s['max_abs_diff']:.3g} "
                f"> {FP32_TOLERANCE:g} · max(1, max|ref| = {s['max_abs_ref']:.3g}); the export is wrong, please report it")
        return figures
    same = compare(got, [w[precision] for w in want])
    limit = BUG_REL_ERROR[precision]
    figures["logits_rel_error_vs_fp32"] = exact["logits"]["rel_l2"]
    figures["max_rel_error_vs_same_weights"] = max(s["rel_l2"] for s in same.values())
    figures["rel_error_vs_same_weights"] = {n: s["rel_l2"] for n, s in same.items()}
    bad = _first_failure(same, lambda s: s["rel_l2"] <= limit)
    if bad:
        raise ExportError(
            f"{path.name} ({precision}) disagrees with the PyTorch reference computed with the same {precision} "
            f"weights first at {bad}: relative error {same[bad]['rel_l2']:.3g} > {limit}; rounding alone stays far "
            "below that, so the export is wrong, please report it")
    return figures
