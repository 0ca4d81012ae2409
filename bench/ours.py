"""Our runtime on one bundle, in a process of its own (so its peak RSS is its own).

    python -m tandem.bench.ours REQUEST.json RESULT.json

REQUEST: {"bundle": dir, "prompts": [[ids]], "max_new_tokens": n, "repeats": r, "threads": t,
          "drafter_threads": t, "block_length": γ, "modes": ["large", "vanilla"]}

Loads the bundle once (every graph of a bundle is loaded: target and drafter), then:

1. a warm-up generation per mode (8 tokens);
2. per mode and prompt, one prefill-only generation (max_new_tokens = 1): its stats are the
   prefill's share of each later generation (M_L and drafter time and calls);
3. `repeats` timed passes over the prompts, interleaved over the modes. tokens/s per pass =
   Σ new tokens / Σ wall-clock seconds of `generate()` (generator set-up, prefill and
   decoding, as the ORT GenAI peer is timed); also from the C++ `total_time`.

Cost ratios from the runtime's own stats, independent of the graphs' I/O (summed over every
timed generation, the matching prefill-only generation subtracted):

    t_L   = (M_L time − prefill M_L time) / (M_L calls − prefill M_L calls)     in `large`:
            the mean one-token M_L step over the generated span
    t_V   = the same in `vanilla`: the mean verification call (γ+1 tokens, fewer near the end)
    t_D   = (drafter time − prefill drafter time) / (drafter calls − prefill drafter calls)
            in `vanilla`: the mean drafter call (1 token; 2 after a fully accepted round)
    c = t_D / t_L          v(γ+1) = t_V / t_L

Reports the RSS once loaded (VmRSS, before any generation) and the peak (VmHWM) at the end.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _rss(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def _log(msg: str) -> None:
    print(f"  ours: {msg}", file=sys.stderr, flush=True)


def _sum(stats: list[dict[str, Any]], key: str) -> float:
    return sum(float(s.get(key) or 0.0) for s in stats)


def _per_call(full: list[dict[str, Any]], prefill: list[dict[str, Any]], time_key: str,
              calls_key: str) -> float | None:
    """Mean seconds per call over the generated span (prefill-only generations subtracted)."""
    calls = _sum(full, calls_key) - _sum(prefill, calls_key)
    if calls <= 0:
        return None
    return (_sum(full, time_key) - _sum(prefill, time_key)) / calls


def run(req: dict[str, Any]) -> dict[str, Any]:
    import tandem

    prompts: list[list[int]] = req["prompts"]
    n, reps, gamma = int(req["max_new_tokens"]), int(req["repeats"]), int(req["block_length"])
    t0 = time.perf_counter()
    model = tandem.load(req["bundle"], threads=int(req["threads"]), drafter_threads=int(req["drafter_threads"]))
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "rss_after_load_mb": _rss("VmRSS"),
                           "bundle_modes": model.modes, "modes": {}, "errors": {}}
    modes = [m for m in req.get("modes", ["large", "vanilla"]) if m in model.modes]
    for m in req.get("modes", []):
        if m not in model.modes:
            out["errors"][m] = f"the bundle has no mode {m} (modes: {', '.join(model.modes)})"

    def gen(ids: list[int], mode: str, new: int) -> tuple[Any, float]:
        start = time.perf_counter()
        r = model.generate(ids, mode=mode, block_length=gamma if mode != "large" else None,
                           max_new_tokens=new, ignore_eos=True)
        return r, time.perf_counter() - start

    prefill: dict[str, list[dict[str, Any]]] = {}
    for mode in list(modes):
        try:
            gen(prompts[0], mode, min(8, n))
            prefill[mode] = [dict(gen(ids, mode, 1)[0].stats) for ids in prompts]
        except Exception as exc:  # noqa: BLE001 - recorded per mode
            out["errors"][mode] = f"{type(exc).__name__}: {exc}"
            modes.remove(mode)
    runs = {m: {"tps": [], "tps_cpp": [], "stats": [], "first_ids": []} for m in modes}
    for r in range(reps):
        for mode in modes:
            run_ = runs[mode]
            tokens, wall, cpp = 0, 0.0, 0.0
            for ids in prompts:
                res, dt = gen(ids, mode, n)
                tokens += len(res.ids)
                wall += dt
                cpp += float(res.stats.get("total_time") or 0.0)
                run_["stats"].append(dict(res.stats))
                if r == 0:
                    run_["first_ids"].append([int(t) for t in res.ids])
            run_["tps"].append(tokens / wall)
            run_["tps_cpp"].append(tokens / cpp if cpp else None)
            _log(f"repeat {r + 1}/{reps} {mode}: {tokens / wall:.2f} tok/s")
    for mode, run_ in runs.items():
        s = run_["stats"]
        rounds, drafted = _sum(s, "rounds"), _sum(s, "drafted")
        m: dict[str, Any] = {
            "tokens_per_second": statistics.median(run_["tps"]), "tokens_per_second_all": run_["tps"],
            "tokens_per_second_cpp": statistics.median([x for x in run_["tps_cpp"] if x] or [0.0]),
            "first_ids": run_["first_ids"], "generations": len(s),
            "large_ms_per_call": 1e3 * (_per_call(s, prefill[mode] * reps, "large_time", "large_calls") or 0.0),
            "loop_share": _sum(s, "loop_time") / _sum(s, "total_time") if _sum(s, "total_time") else None,
            "time_to_first_token_ms": 1e3 * statistics.median(float(x.get("time_to_first_token") or 0) for x in s),
        }
        if mode != "large":
            m.update({
                "block_length": gamma,
                "alpha": _sum(s, "accepted") / drafted if drafted else None,
                "E": (_sum(s, "new_tokens") - len(s)) / rounds if rounds else None,
                "verify_width": (drafted + rounds) / rounds if rounds else None,
                "drafter_ms_per_call": 1e3 * (_per_call(s, prefill[mode] * reps, "drafter_time", "drafter_calls") or 0.0),
            })
        out["modes"][mode] = m
    costs: dict[str, Any] = {"method": "runtime stats, prefill-only generations subtracted (see tandem.bench.ours)"}
    t_l = out["modes"].get("large", {}).get("large_ms_per_call")
    van = out["modes"].get("vanilla")
    if t_l:
        costs["t_large_step_ms"] = t_l
        if van:
            costs["t_verify_ms"] = van["large_ms_per_call"]
            costs["t_draft_ms"] = van["drafter_ms_per_call"]
            costs["c"] = van["drafter_ms_per_call"] / t_l
            costs["v"] = van["large_ms_per_call"] / t_l
            costs["v_width"] = van["verify_width"]
    out["costs"] = costs
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (big) parent process
    out["peak_rss_mb"] = _rss("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tandem.bench.ours REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    req = json.loads(Path(argv[0]).read_text())
    try:
        result = run(req)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"errors": {"setup": f"{type(exc).__name__}: {exc}"}, "modes": {}}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
