"""How fast can speculative decoding get on this machine? The speedup ceiling of a bundle.

    python -m tandem.bench.ceiling                         # the default bundle
    python -m tandem.bench.ceiling BUNDLE --results bench/results/X/results.json --out OUT

Speculative decoding with γ drafts per round emits E(α, γ) = (1 - α^(γ+1)) / (1 - α) tokens
per round in expectation (α: the chance a draft is accepted, i.i.d.; at T = 1 the mean
1 - TV) and costs γ·c + v(γ+1) M_L steps (docs/METHOD.md §4), so

    speedup(α, γ) = E(α, γ) / (γ·c + v(γ+1)),   at most (γ+1) / (γ·c + v(γ+1)) at α = 1.

This measures c and v(k) on the bundle (dedicated ONNX Runtime runs, as `tandem bench`
does, plus the loop's own in-round figures, `Model.decode_costs`), then reports per γ:
the ceiling at α = 1, the α each speedup target needs, and, given a `tandem bench`
results file, the speedup the measured α predicts next to the one achieved. It also
profiles M_L's graph at 1, 2 and 3 tokens per call, by kind of node, to show where the
extra cost of each verified token goes. Writes results.json, results.md and ceiling.png.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tandem.bench.errors import BenchArgumentError, BenchError

DEFAULT_TARGETS = (1.15, 1.3, 1.5)
DEFAULT_GAMMAS = (1, 2, 3, 4)
PROFILE_WIDTHS = (1, 2, 3)


# --------------------------------------------------------------------------- the model


def tokens_per_round(alpha: float, gamma: int) -> float:
    """E(α, γ): expected tokens a round of γ drafts emits (accepted drafts + M_L's token)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"α must lie in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def speedup(alpha: float, gamma: int, c: float, v: float) -> float:
    """E(α, γ) / (γ·c + v): tokens per M_L step, relative to `large` (one token per step)."""
    return tokens_per_round(alpha, gamma) / (gamma * c + v)


def alpha_needed(target: float, gamma: int, c: float, v: float, tol: float = 1e-6) -> float | None:
    """The least α with speedup(α, γ) >= target; None when even α = 1 falls short."""
    if speedup(1.0, gamma, c, v) < target:
        return None
    if speedup(0.0, gamma, c, v) >= target:
        return 0.0
    lo, hi = 0.0, 1.0  # speedup is increasing in α
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if speedup(mid, gamma, c, v) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def cost_sets(costs: dict[str, Any], in_loop: dict[str, dict[str, float]], widths: list[int]) -> list[dict[str, Any]]:
    """The (c, v) pairs to model, per drafter: the dedicated runs' (`costs`: c per drafter,
    v(k) per width), and the loop's own (`in_loop`: c and β per mode, v(k) = 1 + β·(k-1))."""
    out = []
    for role, c in sorted(costs["c"].items()):
        mode = "speed" if role == "tandem_drafter" else "vanilla"
        out.append({"source": "dedicated", "mode": mode, "c": float(c),
                    "v": {int(k): float(x) for k, x in costs["v"].items()}})
        if mode in in_loop:
            rule = in_loop[mode]
            out.append({"source": "in-loop", "mode": mode, "c": float(rule["c"]),
                        "v": {k: 1.0 + float(rule["beta"]) * (k - 1) for k in widths}})
    return out


def ceiling_rows(sets: list[dict[str, Any]], gammas: list[int], targets: list[float],
                 measured: dict[tuple[str, str, int], dict[str, float]]) -> list[dict[str, Any]]:
    """One row per cost set × γ whose v(γ+1) is known: the ceiling, the α each target needs,
    and (when `measured` has the configuration) the prediction at the measured α."""
    rows = []
    for cs in sets:
        c = cs["c"]
        for gamma in gammas:
            v = cs["v"].get(gamma + 1)
            if v is None:
                continue
            row: dict[str, Any] = {
                "mode": cs["mode"], "costs": cs["source"], "gamma": gamma, "c": c, "v": v,
                "round_cost": gamma * c + v,
                "ceiling": speedup(1.0, gamma, c, v),
                "alpha_needed": {f"{t:g}": alpha_needed(t, gamma, c, v) for t in targets},
            }
            for decoding in ("greedy", "sampled"):
                got = measured.get((cs["mode"], decoding, gamma))
                if got:
                    row[decoding] = {"alpha": got["alpha"], "achieved": got["speedup"],
                                     "predicted": speedup(got["alpha"], gamma, c, v)}
            rows.append(row)
    return rows


def measured_alphas(results: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(mode, decoding, γ) -> α and speedup of a `tandem bench` results file's fixed-γ rows."""
    out = {}
    for r in results.get("rows", []):
        if (r.get("family") in ("speed", "vanilla") and isinstance(r.get("block_length"), int)
                and r.get("alpha") is not None and r.get("speedup")):
            out[(r["family"], r["decoding"], r["block_length"])] = {"alpha": float(r["alpha"]),
                                                                    "speedup": float(r["speedup"])}
    return out


# --------------------------------------------------------------------------- where M_L's time goes


def _node_kind(name: str, op: str) -> str:
    if op == "MatMulNBits" or op == "MatMul":
        return "LM head" if name.startswith("lm_head") else "layer matmuls"
    if op == "GroupQueryAttention":
        return "attention"
    return "other nodes"


def profile_large(bundle_graph: Any, threads: int, past_len: int, widths: tuple[int, ...], reps: int,
                  work: Path) -> dict[str, Any]:
    """ORT's per-node profile of M_L at each width, the widths called round-robin in one
    session: mean µs per call by kind of node."""
    from tandem.bench.costs import Call, session

    sess = session(Path(bundle_graph.file), threads, profile_prefix=str(work / "profile"))
    calls = [Call(sess, bundle_graph, width, past_len, last_logits=False) for width in widths]
    warmup = 2
    for _ in range(warmup + reps):
        for call in calls:
            call()
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) != len(calls) * (warmup + reps):
        raise BenchError(f"ORT's profile holds {len(runs)} runs, not the {len(calls) * (warmup + reps)} made")
    starts = [r[0] for r in runs]
    kinds: list[dict[str, float]] = [defaultdict(float) for _ in widths]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        if run < len(calls) * warmup or e["ts"] > runs[run][1]:
            continue
        node = e["name"][: -len("_kernel_time")]
        kinds[run % len(calls)][_node_kind(node, e.get("args", {}).get("op_name", ""))] += e["dur"]
    return {"us_per_call": {str(w): {k: us / reps for k, us in sorted(kind.items())} for w, kind in zip(widths, kinds, strict=True)},
            "note": "ORT profiler kernel times, widths called round-robin; profiling adds overhead: compare "
                    "widths, not absolute times"}


def drafter_cache_effect(bundle: Path, threads: int, past_len: int, reps: int) -> dict[str, Any]:
    """Each drafter's step timed right after an M_L pass (which streams M_L's weights through
    the caches first), as the loop calls it, and as the third of three steps back to back (its
    weights in the core's cache): ms per call."""
    from tandem._core import read_manifest
    from tandem.bench.costs import Call, session

    manifest = read_manifest(str(bundle))
    large_spec = manifest.graphs["large"]
    large_sess = session(Path(large_spec.file), threads)
    large = Call(large_sess, large_spec, 1, past_len, last_logits=True)
    out: dict[str, Any] = {}
    for role in ("tandem_drafter", "plain_drafter"):
        spec = manifest.graphs.get(role)
        if spec is None:
            continue
        step = Call(session(Path(spec.file), 1), spec, 1, past_len, last_logits=True)
        warm, after = [], []
        for _ in range(2):
            large()
            step()
        for _ in range(reps):
            large()
            t0 = time.perf_counter()
            step()
            after.append(time.perf_counter() - t0)
            step()  # the second call back to back: the weights are in cache for the third
            t0 = time.perf_counter()
            step()
            warm.append(time.perf_counter() - t0)
        out[role] = {"warm_ms": statistics.median(warm) * 1e3, "after_large_ms": statistics.median(after) * 1e3}
    return out


# --------------------------------------------------------------------------- report


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    costs, targets, m = res["costs"], res["targets"], res["machine"]
    lines = [f"# speedup ceiling — {res['bundle']}", "",
             f"`{res['command']}`", "",
             f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; onnxruntime "
             f"{m['versions'].get('onnxruntime')}; commit {m.get('git_commit')}; M_L threads {costs['threads']}, "
             f"drafter threads {costs['drafter_threads']}",
             f"- dedicated runs at past length {costs['past_len']}: M_L step {costs['t_large_ms']['1']:.2f} ms; "
             + ", ".join(f"v({k}) = {float(v):.2f}" for k, v in costs["v"].items())
             + "; " + ", ".join(f"c[{k}] = {v:.3f}" for k, v in costs["c"].items())]
    for mode, rule in res.get("in_loop", {}).items():
        lines.append(f"- in the loop (`Model.decode_costs`, {mode}): c = {rule['c']:.3f}, "
                     f"v(k) ≈ 1 + {rule['beta']:.3f}·(k-1)")
    for role, t in res.get("drafter_cache", {}).items():
        lines.append(f"- {role} step: {t['after_large_ms']:.2f} ms right after an M_L pass, as the loop calls it, "
                     f"{t['warm_ms']:.2f} ms as the third of three steps back to back")
    lines += ["", "speedup(α, γ) = E(α, γ) / (γ·c + v(γ+1)), E = (1 - α^(γ+1)) / (1 - α); "
              "the ceiling is α = 1. 'α for N×': the acceptance rate a drafter needs for N× `large` "
              "(– : beyond the ceiling). Costs 'dedicated': each graph alone (a drafter step of one "
              "token, no memory rows); 'in-loop': rounds as generation runs them (a round's first drafter "
              "call takes M_L's new memory rows, the router runs, the two sessions share the cores).", ""]
    head = ["mode", "costs", "γ", "round cost", "ceiling (α=1)"] + [f"α for {t:g}×" for t in targets] + \
        ["greedy α → predicted / achieved", "sampled α → predicted / achieved"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        cells = [r["mode"], r["costs"], str(r["gamma"]), _f(r["round_cost"]), _f(r["ceiling"])]
        cells += [_f(r["alpha_needed"][f"{t:g}"]) for t in targets]
        for dec in ("greedy", "sampled"):
            m = r.get(dec)
            cells.append(f"{m['alpha']:.2f} → {m['predicted']:.2f} / {m['achieved']:.2f}" if m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    prof = res.get("profile")
    if prof:
        widths = list(prof["us_per_call"])
        kinds = sorted({k for w in prof["us_per_call"].values() for k in w})
        lines += ["", f"M_L's time by kind of node, µs per call ({prof['note']}):", "",
                  "| node kind | " + " | ".join(f"{w} token{'s' if w != '1' else ''}" for w in widths)
                  + " | per extra token |", "|---|" + "---:|" * (len(widths) + 1)]
        for kind in [*kinds, "total"]:
            vals = [sum(prof["us_per_call"][w].values()) if kind == "total" else prof["us_per_call"][w].get(kind, 0.0)
                    for w in widths]
            extra = (vals[-1] - vals[0]) / (int(widths[-1]) - int(widths[0])) if len(widths) > 1 else None
            lines.append(f"| {kind} | " + " | ".join(f"{x:.0f}" for x in vals) + f" | {_f(extra, 0)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], out: Path) -> list[str]:
    from tandem.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return []
    modes = sorted({r["mode"] for r in res["rows"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    alphas = [i / 100 for i in range(101)]
    for ax, mode in zip(axes[0], modes, strict=True):
        source = "in-loop" if any(r["costs"] == "in-loop" for r in res["rows"] if r["mode"] == mode) else "dedicated"
        for r in (r for r in res["rows"] if r["mode"] == mode and r["costs"] == source):
            line = ax.plot(alphas, [speedup(a, r["gamma"], r["c"], r["v"]) for a in alphas], label=f"γ={r['gamma']}")[0]
            for dec, marker in (("greedy", "o"), ("sampled", "s")):
                if r.get(dec):
                    ax.plot([r[dec]["alpha"]], [r[dec]["achieved"]], marker=marker, color=line.get_color(),
                            ls="none", label=f"γ={r['gamma']} {dec}, measured")
        for t in res["targets"]:
            ax.axhline(t, color="gray", ls=":", lw=0.8)
        ax.axhline(1.0, color="red", lw=0.8, label="large")
        ax.set_xlabel("acceptance α")
        ax.set_ylabel("speedup vs large")
        ax.set_title(f"{res['bundle']} — {mode} ({source} costs)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ceiling.png", dpi=90)
    plt.close(fig)
    return ["ceiling.png"]


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tandem.bench.ceiling", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="outputs: --out/results.json, results.md, ceiling.png")
    p.add_argument("bundle", nargs="?", type=Path, help="bundle folder (default: the default model)")
    p.add_argument("--results", type=Path,
                   help="a `tandem bench` results.json on this bundle: its measured α and speedups are "
                        "set against the model")
    p.add_argument("--gammas", default=",".join(map(str, DEFAULT_GAMMAS)),
                   help="block lengths γ to report (default: 1,2,3,4)")
    p.add_argument("--targets", default=",".join(f"{t:g}" for t in DEFAULT_TARGETS),
                   help="speedups to solve the needed α for (default: 1.15,1.3,1.5)")
    p.add_argument("--threads", type=int, default=2, help="M_L's intra-op threads (default: 2)")
    p.add_argument("--past-len", type=int, default=128, help="valid KV positions before each timed call")
    p.add_argument("--reps", type=int, default=50, help="timed calls per graph and width")
    p.add_argument("--no-profile", action="store_true", help="skip the per-node profile of M_L")
    p.add_argument("--out", type=Path, help="output folder (default: bench/results/ceiling-<timestamp>/)")
    return p


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchArgumentError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise BenchArgumentError(f"{what}: expected positive numbers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.bench.costs import measure_costs
    from tandem.bench.machine import describe
    from tandem.runtime import api, check_threads

    gammas = _numbers(args.gammas, int, "--gammas")
    targets = _numbers(args.targets, float, "--targets")
    if args.reps < 1 or args.past_len < 1:
        raise BenchArgumentError("--reps and --past-len must be >= 1")
    try:
        check_threads("--threads", args.threads, "one per core")
    except Exception as exc:  # the runtime's typed error, reworded as a bench argument error
        raise BenchArgumentError(str(exc)) from None
    measured: dict[tuple[str, str, int], dict[str, float]] = {}
    if args.results:
        try:
            measured = measured_alphas(json.loads(args.results.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"cannot read the bench results {args.results}: {exc}") from exc
    model = api.load(args.bundle, threads=args.threads)
    bundle = Path(model.bundle_path)
    out = args.out or Path(__file__).resolve().parent / "results" / f"ceiling-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="ceiling", file=sys.stderr)
    steps.set_postfix_str("dedicated c, v(k)")
    widths = sorted({1, *(g + 1 for g in gammas)})
    costs = measure_costs(bundle, args.threads, args.past_len, widths, args.reps)
    steps.update()
    steps.set_postfix_str("in-loop costs")
    in_loop = {}
    for mode in ("speed", "vanilla"):
        if mode in model.modes:
            c, beta = model._model.decode_costs(mode)
            in_loop[mode] = {"c": c, "beta": beta}
    steps.update()
    steps.set_postfix_str("drafters warm / after M_L")
    cache = drafter_cache_effect(bundle, args.threads, costs["past_len"], args.reps)
    steps.update()
    profile = None
    if not args.no_profile:
        steps.set_postfix_str("M_L profile")
        from tandem._core import read_manifest

        large = read_manifest(str(bundle)).graphs["large"]
        profile = profile_large(large, args.threads, costs["past_len"], PROFILE_WIDTHS, max(5, args.reps // 2), out)
    steps.update()
    steps.close()
    res: dict[str, Any] = {
        "bundle": bundle.name, "bundle_path": str(bundle),
        "command": "python -m tandem.bench.ceiling " + " ".join(sys.argv[1:]),
        "machine": describe(args.threads), "targets": targets, "gammas": gammas,
        "costs": costs, "in_loop": in_loop, "drafter_cache": cache, "profile": profile,
        "results_file": str(args.results) if args.results else None,
        "rows": ceiling_rows(cost_sets(costs, in_loop, widths), gammas, targets, measured),
    }
    files = ["results.json", "results.md", *plot(res, out)]
    res["files"] = files
    (out / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(res))
    res["out"] = str(out)
    return res


def main(argv: list[str] | None = None) -> int:
    from tandem.bench.report import tool_main

    return tool_main(_parser(), run, argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

