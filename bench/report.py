"""Write a benchmark's results: results.json, results.md and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        f"# tandem bench — {results['bundle']['name']}",
        "",
        f"`{results['command']}`",
        "",
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, **{m['threads']} threads**; "
        f"{m['platform']}; python {m['python']}; onnxruntime {m['versions'].get('onnxruntime')}; "
        f"commit {m.get('git_commit')}",
        f"- {len(results['prompts'])} prompts, {s['max_new_tokens']} new tokens each (EOS ignored), "
        f"{s['repeats']} repeats (median), sampled: temperature {s['temperature']}",
        f"- idle check: 1-min load {results['idle']['load_at_start'][0]:.2f} at start "
        f"(limit {results['idle']['max_load']}), {results['load_at_end'][0]:.2f} at end",
        f"- c, v: {results['costs'].get('method', '–')} at past length {results['costs'].get('past_len')}: "
        + ", ".join(f"c[{k}] = {v:.3f}" for k, v in results["costs"].get("c", {}).items())
        + "; v(k) = " + ", ".join(f"{k}:{v:.2f}" for k, v in results["costs"].get("v", {}).items()),
    ]
    if results["costs"].get("adaptive_rule"):
        lines.append("- adaptive rows: the stopping rule's costs as the runtime measured them (in-loop rounds, "
                     "`Model.decode_costs`): " + ", ".join(
                         f"{mode} c = {v['c']:.3f}, β = {v['beta']:.3f}"
                         for mode, v in results["costs"]["adaptive_rule"].items()))
    for w in results.get("warnings", []):
        lines.append(f"- **warning**: {w}")
    lines += [
        "",
        "| config | tok/s | speedup vs large | α | E | E_α | c | v | bound E/(s·c+v) | achieved/bound "
        "| loop share | greedy == large | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if r.get("error"):
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['label']} | {_f(r.get('tokens_per_second'), 1)} | {_f(r.get('speedup'))} | {_f(r.get('alpha'))} "
            f"| {_f(r.get('E'))} | {_f(r.get('E_alpha'))} | {_f(r.get('c'), 3)} | {_f(r.get('v'))} "
            f"| {_f(r.get('bound'))} | {_f(r.get('achieved_over_bound'))} | {_f(r.get('loop_share'), 3)} "
            f"| {r.get('greedy_equals_large', '–')} | {_f(r.get('peak_rss_mb'), 0)} |"
        )
    if results.get("peer_rows") or results.get("peers_requested"):
        lines += [
            "",
            "## Peers (same pair, prompts, machine and run; greedy)",
            "",
            f"ortgenai built at **{s.get('peer_precision', 'fp32')}** (bundle: {results['bundle'].get('precision')}); "
            "plain and speculative each in its own process: peak RSS is per system "
            "(speculative: target + draft loaded).",
            "",
            "| peer system | tok/s | vs own plain | α | ours large ÷ this | ours speed ÷ this "
            "| ours vanilla ÷ this | tokens == ours large | RSS loaded MiB | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results.get("peer_rows", []):
            if r.get("error"):
                lines.append(f"| {r['peer']}: {r['system']} | not run: {r['error']} |" + " |" * 8)
                continue
            lines.append(
                f"| {r['system']} | {_f(r['tokens_per_second'], 1)} | {_f(r.get('speedup_vs_own_plain'))} "
                f"| {_f(r.get('alpha'))} | {_f(r.get('ours_large_over_this'))} | {_f(r.get('ours_speed_over_this'))} "
                f"| {_f(r.get('ours_vanilla_over_this'))} | {r.get('ids_equal_ours_large', '–')} "
                f"| {_f(r.get('rss_after_load_mb'), 0)} | {_f(r.get('peak_rss_mb'), 0)} |"
            )
    lines += [
        "",
        "E: measured tokens per round; E_α = (1-α^(γ+1))/(1-α); s: M_S calls per round (γ for a fixed block); "
        "v at the M_L tokens per round (γ+1, γ for tandem); achieved/bound = speedup / bound. "
        "Speedups are ratios to `large` with the same decoding, measured in this run.",
        "",
    ]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """speedup.png (speedup vs γ per mode) and acceptance.png (accepted-drafts histograms)."""
    plt = pyplot()
    if plt is None:
        return []
    rows = [r for r in results["rows"] if r.get("tokens_per_second")]
    decodings = [d for d in ("greedy", "sampled") if any(r["decoding"] == d for r in rows)]
    written = []
    fig, axes = plt.subplots(1, max(1, len(decodings)), figsize=(6 * max(1, len(decodings)), 4), squeeze=False)
    for ax, dec in zip(axes[0], decodings, strict=False):
        for family in ("tandem", "speed", "vanilla"):
            pts = sorted((r["block_length"], r["speedup"]) for r in rows
                         if r["decoding"] == dec and r["family"] == family and isinstance(r["block_length"], int))
            if pts:
                line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=family)[0]
                bounds = sorted((r["block_length"], r.get("bound")) for r in rows if r["decoding"] == dec
                                and r["family"] == family and isinstance(r["block_length"], int) and r.get("bound"))
                if bounds:
                    ax.plot([b[0] for b in bounds], [b[1] for b in bounds], ls=":", color=line.get_color(),
                            label=f"{family} bound")
        for r in rows:
            if r["decoding"] == dec and r["family"].startswith("adaptive"):
                ax.axhline(r["speedup"], ls="--", lw=1, color="gray" if "vanilla" in r["family"] else "black",
                           label=f"{r['family']} (mean γ {r['drafted_per_round']:.1f})")
        ax.axhline(1.0, color="red", lw=0.8, label="large")
        ax.set_xticks(sorted({r["block_length"] for r in rows if isinstance(r["block_length"], int)}))
        ax.set_xlabel("block length γ")
        ax.set_ylabel("speedup vs large (tokens/s ratio)")
        ax.set_title(f"{results['bundle']['name']} — {dec}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=90)
    plt.close(fig)
    written.append("speedup.png")

    hist_rows = [r for r in rows if r.get("accepted_histogram") and r["family"] in ("speed", "vanilla")
                 and r["block_length"] == results["settings"]["reference_block_length"]]
    hist_rows += [r for r in rows if r.get("accepted_histogram") and r["family"].startswith("adaptive")]
    if hist_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(hist_rows)
        for i, r in enumerate(hist_rows):
            h = r["accepted_histogram"]
            total = sum(h) or 1
            ax.bar([x + i * width for x in range(len(h))], [n / total for n in h], width=width, label=r["label"])
        ax.set_xlabel("drafts accepted in a round")
        ax.set_ylabel("share of rounds")
        ax.set_title("acceptance histogram")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "acceptance.png", dpi=90)
        plt.close(fig)
        written.append("acceptance.png")
    return written


def write(results: dict[str, Any], out: Path, with_plots: bool = True) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = ["results.json", "results.md"]
    if with_plots:
        files += plots(results, out)
    results["files"] = files
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(results))
    return files


def tool_main(parser: Any, run: Any, argv: list[str] | None) -> int:
    """main() of a `python -m tandem.bench.<tool>`: parse `argv`, `run` the arguments (it writes
    its files and returns a dict with "out" and "files"), print the results.md it wrote. A
    BenchError is printed as `error: ...` and gives exit status 2."""
    from tandem.bench.errors import BenchError

    args = parser.parse_args(argv)
    try:
        res = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(res["out"]) / "results.md").read_text())
    print(f"wrote {', '.join(res['files'])} to {res['out']}")
    return 0
