"""Dedicated timing runs for the cost ratios of the performance model (docs/METHOD.md §4).

Each graph of the bundle runs alone in an ONNX Runtime session configured like the C++
loop's (ORT_ENABLE_ALL, `threads` intra-op, 1 inter-op), on random inputs with a past of
`past_len` positions, its KV buffers bound once as past and present (as the loop does):

    t_L(k)  M_L pass over k new tokens            v(k) = t_L(k) / t_L(1)
    t_S     one tandem M_S step (t=1, m=0)        c    = t_S / t_L(1)
    t_D     one plain drafter step (t=1)          c    = t_D / t_L(1)   (vanilla)

Medians of `reps` timed calls after 2 warm-up calls; M_L's widths are timed round-robin.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any


def session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    """An ORT CPU session configured like the C++ loop's; ORT's profiler on when
    `profile_prefix` is given (its trace file starts with it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Call:
    """One graph call repeated like the C++ loop makes it: KV buffers of `past_len + tokens`
    rows (seeded random past) bound once as past and present, `tokens` new ids after
    `past_len` valid rows, the logits of the last row only when `last_logits`. `spec`: the
    graph's entry as the C++ reader read it (`tandem._core.GraphSpec`)."""

    def __init__(self, session: Any, spec: Any, tokens: int, past_len: int, last_logits: bool) -> None:
        import numpy as np
        import onnxruntime as ort

        from tandem.export.feeds import graph_feeds, random_inputs

        feeds = graph_feeds(spec, random_inputs(spec, tokens, past_len, logits_from=tokens - 1 if last_logits else 0))
        self.session, self.binding = session, session.io_binding()
        self._values = {}
        for name, array in feeds.items():
            self._values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
            self.binding.bind_ortvalue_input(name, self._values[name])
        for past, present in zip([*spec.past_keys, *spec.past_values], [*spec.present_keys, *spec.present_values],
                                 strict=True):
            self.binding.bind_ortvalue_output(present, self._values[past])
        for out in session.get_outputs():
            if out.name not in spec.present_keys and out.name not in spec.present_values:
                self.binding.bind_output(out.name)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def _median_time(call: Call, reps: int) -> float:
    return _interleaved_medians([call], reps)[0]


def _interleaved_medians(calls: list[Call], reps: int) -> list[float]:
    """Median seconds per call of each of `calls`, timed round-robin (so that a slow spell of a
    noisy machine lands on every call alike), after 2 warm-up rounds."""
    for _ in range(2):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(max(1, reps)):
        for call, out in zip(calls, times, strict=True):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure_costs(bundle: Path, threads: int, past_len: int, widths: list[int], reps: int,
                  drafter_threads: int = 1) -> dict[str, Any]:
    """t_L(k) for every k in `widths` (1 always included), t_S, t_D, and the ratios c and v.
    The drafters run with `drafter_threads` intra-op threads, as the runtime runs them."""
    from tandem._core import read_manifest

    manifest = read_manifest(str(bundle))  # graphs' files are absolute paths
    past_len = max(1, min(past_len, manifest.context_length - max(widths) - 1))
    large = manifest.graphs["large"]
    sess = session(Path(large.file), threads)
    ks = sorted({1, *widths})
    t_large = dict(zip(ks, _interleaved_medians([Call(sess, large, k, past_len, last_logits=False) for k in ks], reps),
                       strict=True))
    del sess
    out: dict[str, Any] = {
        "method": "dedicated ORT timing runs per graph (random inputs, median of reps)",
        "past_len": past_len, "reps": reps, "threads": threads, "drafter_threads": drafter_threads,
        "t_large_ms": {str(k): t * 1e3 for k, t in t_large.items()},
        "v": {str(k): t / t_large[1] for k, t in t_large.items()},
        "c": {},
        "t_step_ms": {},
    }
    for role in ("tandem_drafter", "plain_drafter"):
        spec = manifest.graphs.get(role)
        if spec is None:
            continue
        sess = session(Path(spec.file), drafter_threads or threads)
        t = _median_time(Call(sess, spec, 1, past_len, last_logits=True), reps)
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
