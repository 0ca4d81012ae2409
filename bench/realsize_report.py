"""Write the real-size benchmark's results: results.json, results.md and tokens_per_second.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ids(cmp: dict[str, Any] | None) -> str:
    if not cmp:
        return "–"
    text = f"{cmp['identical']}/{cmp['prompts']}"
    diverged = [i for i in cmp["first_divergence"] if i is not None]
    return text + (f" (first diff at {min(diverged)})" if diverged else "")


def _label(e: dict[str, Any]) -> str:
    drafter = "self" if e["drafter"] == e["target"] else e["drafter"]
    return f"{e['target']} (drafter {drafter})"


def _errors(e: dict[str, Any]) -> list[str]:
    out = []
    if (e.get("export") or {}).get("error"):
        out.append(f"ours export: {e['export']['error']}")
    for key, why in (e.get("ours") or {}).get("errors", {}).items():
        if key != "setup" or not (e.get("export") or {}).get("error"):
            out.append(f"ours {key}: {why}")
    if (e.get("quality") or {}).get("error"):
        out.append(f"quality: {e['quality']['error']}")
    g = e.get("ortgenai") or {}
    for key, why in g.get("build_errors", {}).items():
        out.append(f"ortgenai build {key}: {why}")
    for system in ("greedy", "speculative"):
        for key, why in (g.get(system) or {}).get("errors", {}).items():
            out.append(f"ortgenai {system} {key}: {why}")
    return out


def quality_table(entries: list[dict[str, Any]]) -> list[str]:
    """The "Quality vs fp32" section (entries with --quality figures), or no lines."""
    rows = [e for e in entries if e.get("quality") and not e["quality"].get("error")]
    if not rows:
        return []
    lines = [
        "",
        "## Quality vs fp32 (same prefill calls; our large graph and GenAI's target graph vs the float32 "
        "PyTorch reference)",
        "",
        "| model | precision | prompts | ours argmax | ours top-5 | ours rel L2 | ours KL | GenAI argmax "
        "| GenAI top-5 | GenAI rel L2 | GenAI KL | ours vs GenAI argmax | NLL fp32 / ours / GenAI |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in rows:
        q = e["quality"]
        o, g, v = q.get("ours") or {}, q.get("genai") or {}, q.get("ours_vs_genai") or {}
        nll = " / ".join(_f((x or {}).get("nll"), 3) for x in (q.get("fp32"), o, g)) if "nll" in o else "–"
        lines.append(
            f"| {_label(e)} | {e['precision']} | {q['cases']} × {q['tokens'][0]} {q['prompts']} "
            f"| {_f(o.get('argmax_agreement'), 4)} | {_f(o.get('top5_overlap'), 4)} | {_f(o.get('rel_l2'), 4)} "
            f"| {_f(o.get('kl_vs_fp32'), 4)} | {_f(g.get('argmax_agreement'), 4)} | {_f(g.get('top5_overlap'), 4)} "
            f"| {_f(g.get('rel_l2'), 4)} | {_f(g.get('kl_vs_fp32'), 4)} | {_f(v.get('argmax_agreement'), 4)} | {nll} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    m, st = results["machine"], results["settings"]
    pv = results.get("peer_versions") or {}
    exp = results.get("exporter") or {}
    lines = [
        "# Real-size benchmark: tandem vs ONNX Runtime GenAI",
        "",
        f"`{results['command']}`",
        "",
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, **{st['threads']} threads** "
        f"(drafters {st['drafter_threads']}); {m['platform']}; python {m['python']}",
        f"- ours: onnxruntime {m['versions'].get('onnxruntime')}, commit {exp.get('commit', '?')[:10]}"
        + (f" + uncommitted changes {exp['dirty']}" if exp.get("dirty") else "")
        + f"; GenAI: onnxruntime-genai {pv.get('onnxruntime-genai', '–')}, onnxruntime {pv.get('onnxruntime', '–')}",
        f"- {st['prompts']} random prompts of {st['prompt_length'][0]}–{st['prompt_length'][1]} ids, "
        f"{st['max_new_tokens']} new tokens each (greedy, EOS ignored), γ = {st['block_length']}, "
        f"{st['repeats']} repeats (median), our context {st['context_length']}",
        f"- idle check: 1-min load {results['idle']['load_at_start'][0]:.2f} at start "
        f"(limit {results['idle']['max_load']}), {results['load_at_end'][0]:.2f} at end"
        + (" (decoding runs skipped: --no-timing)" if results["idle"].get("skipped") else ""),
    ]
    for w in results.get("warnings", []):
        lines.append(f"- **warning**: {w}")
    entries = results["entries"]
    lines += [
        "",
        "## Export / build (wall time and peak RSS of the process)",
        "",
        "| model | precision | ours export s | ours peak MiB | GenAI target s | GenAI drafter s | GenAI peak MiB "
        "| time ours ÷ GenAI | RSS ours ÷ GenAI |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        s = e["summary"]
        lines.append(
            f"| {_label(e)} | {e['precision']} | {_f(s['export_s_ours'], 1)} | {_f(s['export_rss_mb_ours'], 0)} "
            f"| {_f(s['build_s_genai_target'], 1)} | {_f(s['build_s_genai_draft'], 1)} "
            f"| {_f(s['build_rss_mb_genai'], 0)} | {_f(s['export_time_ratio'])} | {_f(s['export_rss_ratio'])} |")
    if st.get("timing", True):  # --no-timing: no decoding, cost or memory figures
        lines += [
            "",
            "## Decoding tokens/s (same prompts, threads, tokens and γ; ratio > 1: ours faster)",
            "",
            "| model | precision | ours large | GenAI plain | ratio | ours vanilla | GenAI speculative | ratio "
            "| speedup ours | speedup GenAI | α ours | α GenAI | ids ours large == GenAI plain |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in entries:
            s = e["summary"]
            lines.append(
                f"| {_label(e)} | {e['precision']} | {_f(s['tps_ours_large'])} | {_f(s['tps_genai_plain'])} "
                f"| **{_f(s['plain_ratio'])}** | {_f(s['tps_ours_vanilla'])} | {_f(s['tps_genai_spec'])} "
                f"| **{_f(s['spec_ratio'])}** | {_f(s['speedup_ours'])} | {_f(s['speedup_genai'])} "
                f"| {_f(s['alpha_ours'])} | {_f(s['alpha_genai'])} | {_ids(s['ids_ours_large_vs_genai_plain'])} |")
        lines += [
            "",
            "## Cost ratios",
            "",
            "| model | precision | ours M_L step ms | c | v(γ+1) | GenAI ms/token plain | GenAI draft ms/pass "
            "| GenAI target ms/pass | GenAI c≈ | GenAI v≈ |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in entries:
            s = e["summary"]
            lines.append(
                f"| {_label(e)} | {e['precision']} | {_f(s['t_large_step_ms'])} | {_f(s['c'], 3)} | {_f(s['v'])} "
                f"| {_f(s['genai_ms_per_token_plain'])} | {_f(s['genai_draft_ms_per_pass'])} "
                f"| {_f(s['genai_target_ms_per_pass'])} | {_f(s.get('c_genai_approx'), 3)} "
                f"| {_f(s.get('v_genai_approx'))} |")
        lines += [
            "",
            "## Runtime memory (MiB; loaded = before any generation, peak = VmHWM at the end)",
            "",
            "| model | precision | ours loaded | ours peak | GenAI plain loaded | GenAI plain peak "
            "| GenAI spec loaded | GenAI spec peak | peak ours ÷ GenAI spec |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in entries:
            s = e["summary"]
            lines.append(
                f"| {_label(e)} | {e['precision']} | {_f(s['rss_ours_loaded'], 0)} | {_f(s['rss_ours_peak'], 0)} "
                f"| {_f(s['rss_genai_plain_loaded'], 0)} | {_f(s['rss_genai_plain_peak'], 0)} "
                f"| {_f(s['rss_genai_spec_loaded'], 0)} | {_f(s['rss_genai_spec_peak'], 0)} | {_f(s['rss_ratio'])} |")
    lines += quality_table(entries)
    errors = [(e, why) for e in entries for why in _errors(e)]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {_label(e)} {e['precision']}: {why}" for e, why in errors]
    lines += ["", "## Method", ""]
    lines += [f"- **{k}**: {v}" for k, v in results["method"].items()]
    lines += [
        "- ours large vs vanilla greedy ids (lossless check): "
        + "; ".join(f"{_label(e)} {e['precision']}: {_ids(e['summary']['ids_ours_vanilla_vs_ours_large'])}"
                    for e in entries),
        "- random models with tied embeddings mostly repeat their input: α is near 1 even for a different "
        "random drafter; real drafters accept less.",
        "",
    ]
    return "\n".join(lines)


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """tokens_per_second.png: bars per (model, precision) and system."""
    from tandem.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return []
    entries = [e for e in results["entries"] if any(e["summary"].get(k) for k in
                                                    ("tps_ours_large", "tps_genai_plain"))]
    if not entries:
        return []
    series = (("tps_ours_large", "ours large"), ("tps_genai_plain", "GenAI plain"),
              ("tps_ours_vanilla", "ours vanilla"), ("tps_genai_spec", "GenAI speculative"))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(entries)), 4.2))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        xs = [j + i * width for j in range(len(entries))]
        ys = [e["summary"].get(key) or 0.0 for e in entries]
        bars = ax.bar(xs, ys, width=width, label=label)
        ax.bar_label(bars, labels=[f"{y:.1f}" if y else "" for y in ys], fontsize=6)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(entries))])
    ax.set_xticklabels([f"{_label(e)}\n{e['precision']}" for e in entries], fontsize=7)
    ax.set_ylabel("tokens/s (median of repeats)")
    st = results["settings"]
    ax.set_title(f"ours vs ONNX Runtime GenAI, {st['threads']} threads, γ = {st['block_length']}, "
                 f"{st['max_new_tokens']} new tokens", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tokens_per_second.png", dpi=90)
    plt.close(fig)
    return ["tokens_per_second.png"]


def write(results: dict[str, Any], out: Path, with_plots: bool = True) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = ["results.json", "results.md"]
    if with_plots:
        files += plots(results, out)
    results["files"] = files
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(results))
    return files
