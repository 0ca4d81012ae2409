"""Dedicated timing runs for the cost ratios of the performance model (TANDEM.md §5).

Each graph of the bundle runs alone in an ONNX Runtime session configured like the C++
loop's (ORT_ENABLE_ALL, `threads` intra-op, 1 inter-op), on random inputs with a past of
`past_len` positions:

    t_L(k)  M_L pass over k new tokens            v(k) = t_L(k) / t_L(1)
    t_S     one tandem M_S step (t=1, m=0)        c    = t_S / t_L(1)
    t_D     one plain drafter step (t=1)          c    = t_D / t_L(1)   (vanilla)

Medians of `reps` timed calls after 2 warm-up calls.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tandem.manifest import GraphSpec, Manifest


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(spec: GraphSpec, session: Any, tokens: int, past_len: int, memory: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    types = {i.name: i.type for i in session.get_inputs()}
    id_type = np.int32 if types.get(spec.input_ids) == "tensor(int32)" else np.int64
    feeds: dict[str, Any] = {spec.input_ids: rng.integers(0, spec.vocab_size, (1, tokens)).astype(id_type)}
    for name in spec.memory:
        feeds[name] = rng.standard_normal((1, memory, spec.memory_size)).astype(np.float32)
    shape = (1, spec.num_kv_heads, past_len, spec.head_dim)
    for k, v in zip(spec.past_keys, spec.past_values, strict=True):
        feeds[k] = rng.standard_normal(shape).astype(np.float32)
        feeds[v] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _median_time(session: Any, feeds: dict[str, Any], reps: int) -> float:
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_costs(bundle: Path, threads: int, past_len: int, widths: list[int], reps: int) -> dict[str, Any]:
    """t_L(k) for every k in `widths` (1 always included), t_S, t_D, and the ratios c and v."""
    manifest = Manifest.load(bundle)
    past_len = max(1, min(past_len, manifest.context_length - max(widths) - 1))
    large = manifest.graphs["large"]
    sess = _session(bundle / large.file, threads)
    t_large = {k: _median_time(sess, _feeds(large, sess, k, past_len), reps) for k in sorted({1, *widths})}
    del sess
    out: dict[str, Any] = {
        "method": "dedicated ORT timing runs per graph (random inputs, median of reps)",
        "past_len": past_len, "reps": reps, "threads": threads,
        "t_large_ms": {str(k): t * 1e3 for k, t in t_large.items()},
        "v": {str(k): t / t_large[1] for k, t in t_large.items()},
        "c": {},
        "t_step_ms": {},
    }
    for role in ("small", "draft"):
        spec = manifest.graphs.get(role)
        if spec is None:
            continue
        sess = _session(bundle / spec.file, threads)
        t = _median_time(sess, _feeds(spec, sess, 1, past_len, memory=0), reps)
        out["t_step_ms"][role] = t * 1e3
        out["c"][role] = t / t_large[1]
    return out


def v_at(costs: dict[str, Any], width: float) -> float | None:
    """v for a (possibly fractional, mean) verification width, interpolated linearly."""
    table = {int(k): float(x) for k, x in costs.get("v", {}).items()}
    if not table:
        return None
    keys = sorted(table)
    width = min(max(width, keys[0]), keys[-1])
    lo = max(k for k in keys if k <= width)
    hi = min(k for k in keys if k >= width)
    if lo == hi:
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (width - lo) / (hi - lo)
