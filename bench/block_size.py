"""int8/int4 quantization block size: what a larger block buys (speed, size) and costs (quality).

    python -m tandem.bench.block_size --hf build/smollm2                 # int4, blocks of 32 and 64
    python -m tandem.bench.block_size --hf HF_DIR --sizes 32,64,128 --precision int8 --out OUT

Exports M_L of a Hugging Face folder at `--precision` once per block size (and at fp32, the
reference), then, per block size:

- **size**: bytes of the graph's weights (`large.onnx.data`);
- **speed**: one decode step (1 token after a past of `--past-len`), ms, in an ONNX Runtime
  session set up like the C++ loop's; the sizes take turns over `--rounds` rounds of
  `--steps` steps (medians), so a slow spell of a noisy machine falls on all of them;
- **quality** on real text (prose and code shipped with this repo and Python's standard
  library, tokenized by the folder's tokenizer, windows of `--window` tokens): the mean
  next-token negative log-likelihood of the text, and argmax agreement with the fp32 graph.

Writes results.json, results.md and block_size.png into --out (default
bench/results/block-size/). Exports are cached under --work (default build/block_size/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tandem.bench.errors import BenchArgumentError, BenchError

REPO = Path(__file__).resolve().parent.parent
# Python modules whose source is the code half of the text (present wherever Python is)
STDLIB_MODULES = ("argparse", "json.decoder", "statistics", "textwrap", "heapq", "bisect", "fractions",
                  "shlex", "string", "csv", "difflib", "calendar")


def text_windows(tokenizer_file: Path, window: int, count: int) -> list[list[int]]:
    """`count` windows of `window` ids: the prose and code of `tandem.bench.quality.TEXTS` and
    the standard-library modules above, in order, cut into consecutive windows."""
    import importlib
    import inspect

    from tokenizers import Tokenizer

    from tandem.bench.quality import TEXTS

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids: list[int] = []
    for text in TEXTS:
        ids += tok.encode(text, add_special_tokens=False).ids
    for name in STDLIB_MODULES:
        ids += tok.encode(inspect.getsource(importlib.import_module(name)), add_special_tokens=False).ids
    windows = [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)][:count]
    if len(windows) < count:
        raise BenchError(f"the text holds {len(windows)} windows of {window} tokens, fewer than --windows {count}")
    return windows


def export_large(hf: Path, work: Path, precision: str, block_size: int) -> Path:
    """M_L alone at `precision` (blocks of `block_size`) in `work`, reused when already there."""
    from tandem.export.bundle import export_bundle

    out = work / (f"{precision}-b{block_size}" if precision in ("int8", "int4") else precision)
    if not (out / "tandem.json").is_file():
        export_bundle(hf, out, precision=precision, block_size=block_size, validate=False, progress=None)
    return out


def prefill_logits(bundle: Path, windows: list[list[int]], threads: int) -> list[np.ndarray]:
    """Every row's logits of each window, one prefill call each (empty past)."""
    from tandem._core import read_manifest
    from tandem.bench.costs import session
    from tandem.export.feeds import CaseInputs, graph_feeds

    spec = read_manifest(str(bundle)).graphs["large"]
    sess = session(Path(spec.file), threads)
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), np.float32)
    out = []
    for ids in windows:
        inputs = CaseInputs(np.array([ids], np.int64), [], [(empty, empty)] * spec.num_layers, logits_from=0)
        out.append(sess.run([spec.logits], graph_feeds(spec, inputs))[0][0])
    return out


def quality(logits: list[np.ndarray], windows: list[list[int]], reference: list[np.ndarray] | None) -> dict[str, float]:
    """Mean NLL of each window's next tokens, and argmax agreement with `reference`."""
    nll, agree, total = 0.0, 0, 0
    for rows, ids, ref in zip(logits, windows, reference or [None] * len(logits), strict=True):
        rows = rows[:-1].astype(np.float64)
        rows -= rows.max(axis=-1, keepdims=True)
        logp = rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        total += len(ids) - 1
        if ref is not None:
            agree += int((rows.argmax(-1) == ref[:-1].argmax(-1)).sum())
    return {"nll": nll / total, "argmax_agreement_with_fp32": agree / total if reference is not None else 1.0,
            "positions": total}


def step_times(bundles: dict[str, Path], threads: int, past_len: int, rounds: int, steps: int) -> dict[str, float]:
    """Median ms of a one-token decode step per bundle, the bundles taking turns."""
    from tandem._core import read_manifest
    from tandem.bench.costs import Call, session

    calls = {}
    for key, bundle in bundles.items():
        spec = read_manifest(str(bundle)).graphs["large"]
        calls[key] = Call(session(Path(spec.file), threads), spec, 1, past_len, last_logits=True)
    times: dict[str, list[float]] = {k: [] for k in bundles}
    for _ in range(rounds):
        for key, call in calls.items():
            for _ in range(3):  # warm-up: the previous size's weights went through the caches
                call()
            for _ in range(steps):
                t0 = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# quantization block size — {res['model']}", "", f"`{res['command']}`", "",
             f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {res['threads']} threads; onnxruntime "
             f"{m['versions'].get('onnxruntime')}; commit {m.get('git_commit')}",
             f"- quality: {res['positions']} next-token positions of real text (windows of {res['window']} tokens: "
             "prose and code of `tandem.bench.quality`, Python standard-library source)",
             f"- speed: one-token decode step after a past of {res['past_len']}, median of {res['rounds']} rounds × "
             f"{res['steps']} steps, the sizes taking turns", "",
             "| weights | block size | weights MB | decode step ms | vs blocks of 32 | NLL of the text | "
             "argmax = fp32 |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((r for r in res["rows"] if r["block_size"] == 32), None)
    for r in res["rows"]:
        ratio = f"{base['step_ms'] / r['step_ms']:.2f}× faster" if base and r is not base and r["precision"] != "fp32" else "–"
        lines.append(f"| {r['precision']} | {r['block_size'] or '–'} | {r['weights_mb']:.1f} | {r['step_ms']:.2f} | {ratio} "
                     f"| {r['nll']:.4f} | {r['argmax_agreement_with_fp32']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], out: Path) -> list[str]:
    from tandem.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return []
    rows = res["rows"]
    labels = [f"{r['precision']}" + (f"\nB={r['block_size']}" if r["block_size"] else "") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(axes, ("step_ms", "weights_mb", "nll"), ("decode step (ms)", "weights (MB)",
                                                                       "NLL of real text"), strict=True):
        ax.bar(labels, [r[key] for r in rows], color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(res["model"])
    fig.tight_layout()
    fig.savefig(out / "block_size.png", dpi=90)
    plt.close(fig)
    return ["block_size.png"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tandem.bench.block_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", type=Path, required=True, help="M_L: a Hugging Face folder (config, safetensors, tokenizer)")
    p.add_argument("--precision", choices=("int8", "int4"), default="int4")
    p.add_argument("--sizes", default="32,64", help="block sizes to compare (default: 32,64)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    p.add_argument("--window", type=int, default=256, help="tokens per text window (default: 256)")
    p.add_argument("--windows", type=int, default=24, help="text windows (default: 24)")
    p.add_argument("--past-len", type=int, default=128, help="past of the timed decode steps (default: 128)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of timing, the sizes taking turns (default: 5)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per size and round (default: 40)")
    p.add_argument("--work", type=Path, default=REPO / "build" / "block_size", help="export cache")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "block-size", help="output folder")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.bench.machine import describe
    from tandem.export.quantize import BLOCK_SIZES
    from tandem.runtime import check_threads

    try:
        sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    except ValueError:
        raise BenchArgumentError(f"--sizes: expected comma-separated integers, got {args.sizes!r}") from None
    if not sizes or any(s not in BLOCK_SIZES for s in sizes):
        raise BenchArgumentError(f"--sizes must be among {BLOCK_SIZES}, got {args.sizes!r}")
    if min(args.window, args.windows, args.rounds, args.steps, args.past_len) < 1 or args.window < 2:
        raise BenchArgumentError("--window must be >= 2 and --windows, --rounds, --steps, --past-len >= 1")
    try:
        check_threads("--threads", args.threads, "one per core")
    except Exception as exc:  # the runtime's typed error, as a bench argument error
        raise BenchArgumentError(str(exc)) from None
    if not (args.hf / "config.json").is_file() or not (args.hf / "tokenizer.json").is_file():
        raise BenchError(f"{args.hf} is not a Hugging Face folder with a tokenizer (config.json, tokenizer.json)")
    windows = text_windows(args.hf / "tokenizer.json", args.window, args.windows)
    keys = ["fp32", *(f"{args.precision}-b{s}" for s in sizes)]
    bar = tqdm(total=2 * len(keys) + 1, desc="block size", file=sys.stderr)
    bundles: dict[str, Path] = {}
    for key in keys:
        bar.set_postfix_str(f"export {key}")
        precision, _, size = key.partition("-b")
        bundles[key] = export_large(args.hf, args.work, precision, int(size) if size else 32)
        bar.update()
    logits: dict[str, list[np.ndarray]] = {}
    for key in keys:
        bar.set_postfix_str(f"text through {key}")
        logits[key] = prefill_logits(bundles[key], windows, args.threads)
        bar.update()
    bar.set_postfix_str("decode steps")
    steps = step_times(bundles, args.threads, args.past_len, args.rounds, args.steps)
    bar.update()
    bar.close()
    rows = []
    for key in keys:
        precision, _, size = key.partition("-b")
        figures = quality(logits[key], windows, None if key == "fp32" else logits["fp32"])
        data = sum(f.stat().st_size for f in bundles[key].glob("*.onnx.data"))
        rows.append({"precision": precision, "block_size": int(size) if size else None, "weights_mb": data / 1e6,
                     "step_ms": steps[key], **figures})
    res: dict[str, Any] = {
        "model": args.hf.name, "command": "python -m tandem.bench.block_size " + " ".join(sys.argv[1:]),
        "machine": describe(args.threads), "threads": args.threads, "window": args.window,
        "positions": rows[0]["positions"], "past_len": args.past_len, "rounds": args.rounds, "steps": args.steps,
        "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    res["files"] = ["results.json", "results.md", *plot(res, args.out)]
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(res))
    res["out"] = str(args.out)
    return res


def main(argv: list[str] | None = None) -> int:
    from tandem.bench.report import tool_main

    return tool_main(_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
