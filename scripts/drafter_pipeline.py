#!/usr/bin/env python
"""The README's "Train a drafter for your model" pipeline, end to end, with its costs.

From a Hugging Face M_L folder to a bundle, with exactly the commands the README shows:

1. ``tandem reps``: M_L's layer representations and top-k teacher, once, to fp16 shards
   (ONNX Runtime, int4); resumes when rerun;
2. ``tandem train --reps --shared-head --draft-vocab``: a 1-layer drafter at M_L's width that
   shares M_L's embedding and LM head (frozen) and drafts among the most frequent tokens;
3. ``tandem export --precision int4``;
4. lossless check: greedy ``speed`` (fixed γ and adaptive) equals ``large`` token for token;
5. ``tandem bench``: c (M_S step / M_L step, dedicated timing and runtime stats), speed.

Writes ``REPORT.json`` and ``REPORT.md`` with every step's wall time, throughput, peak RSS
and the bundle's file sizes. Default M_L: the random-weight Qwen2-1.5B-shaped folder that
``python -m tandem.bench.realsize`` builds (speed does not depend on training).

    .venv/bin/python scripts/drafter_pipeline.py --large build/realsize/models/qwen2-1.5b \\
        --data /usr/lib/python3.11/asyncio ... --work build/drafter_pipeline
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TANDEM = [sys.executable, "-m", "tandem.cli"]
PROMPTS = ["def quicksort(items):\n", "import os\nimport sys\n\n\ndef main(", "class Stack:\n    def __init__(self",
           "for i in range(10):\n    print(", "# Parse the command line\nparser = argparse.ArgumentParser(",
           "async def fetch(session, url):\n", "with open(path) as f:\n    for line in f:\n", "try:\n    import json\n"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", type=Path, required=True, help="M_L: Hugging Face folder")
    p.add_argument("--data", nargs="+", required=True, help="training text/code files or folders")
    p.add_argument("--work", type=Path, required=True, help="folder for reps, drafter, bundle, bench")
    p.add_argument("--report", type=Path, default=REPO / "docs/results/drafter_pipeline_qwen2-1.5b")
    p.add_argument("--rep-layer", type=int, help="M_L layer the drafter reads (default: the middle one)")
    p.add_argument("--store-layers", help="M_L layers `tandem reps` stores, comma-separated (default: --rep-layer); "
                   "storing several lets later runs read another layer from the same shards")
    p.add_argument("--reps-tokens", type=int, default=204_800)
    p.add_argument("--seq-len", type=int, default=256, help="precomputed window length")
    p.add_argument("--train-seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--block-length", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-block-lengths", help="γ values `tandem bench` sweeps, comma-separated (default: --block-length)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--random-weights", action="store_true", help="M_L has random weights (said in the report)")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run a step, its output to `log`; returns its wall time (raises on failure)."""
    print("$", " ".join(cmd[2:] if cmd[:2] == TANDEM[:2] else cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        raise SystemExit(f"step failed ({code}); see {log}")
    return time.perf_counter() - start


def child_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    large_config = json.loads((a.large / "config.json").read_text())
    layer = a.rep_layer if a.rep_layer is not None else large_config["num_hidden_layers"] // 2
    reps, drafter, bundle = work / "reps", work / "tandem", work / "bundle"
    record: dict = {"large": str(a.large), "large_config": {k: large_config.get(k) for k in (
        "model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "tie_word_embeddings")}, "args": {k: str(v) if isinstance(v, Path) else v
                                                               for k, v in vars(a).items()}, "steps": {}}
    steps = {
        "reps": [*TANDEM, "reps", "--large", str(a.large), "--data", *a.data, "--rep-layers", a.store_layers or str(layer),
                 "--out", str(reps), "--max-tokens", str(a.reps_tokens), "--seq-len", str(a.seq_len),
                 "--threads", str(a.threads)],
        "train": [*TANDEM, "train", "--mode", "tandem", "--large", str(a.large), "--reps", str(reps),
                  "--data", *a.data, "--layers", "1", "--shared-head", "--draft-vocab", str(a.draft_vocab),
                  "--layer-assignment", str(layer), "--block-length", str(a.block_length), "--variable-boundaries",
                  "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--seq-len", str(a.train_seq_len),
                  "--out", str(drafter), "--no-resume"],
        "export": [*TANDEM, "export", "--large", str(a.large), "--tandem", str(drafter), "--out", str(bundle),
                   "--precision", "int4", "--block-length", str(a.block_length)],
    }
    if (reps / "reps.json").is_file():  # an earlier run's shards: this run resumes after them
        record["reps_complete_shards_before"] = json.loads((reps / "reps.json").read_text())["complete_shards"]
    for name, cmd in steps.items():
        seconds = run(cmd, work / f"{name}.log")
        record["steps"][name] = {"command": "tandem " + " ".join(cmd[3:]), "seconds": seconds,
                                 "peak_rss_mb_so_far": child_peak_rss_mb()}
    spec = json.loads((reps / "reps.json").read_text())
    record["reps"] = {k: spec[k] for k in ("layers", "seq_len", "distil", "top_k", "total_windows", "engine",
                                           "precision", "tokens_per_second", "extra")}
    record["reps"]["tokens"] = spec["total_windows"] * spec["seq_len"]
    record["reps"]["storage_mb"] = sum(f.stat().st_size for f in reps.glob("*.npy")) / 1e6
    summary = json.loads((drafter / "training_summary.json").read_text())
    record["train"] = {k: summary.get(k) for k in ("final_loss", "router", "training_tokens_per_second",
                                                   "steps_done")}
    record["bundle_files_mb"] = {f.name: f.stat().st_size / 1e6 for f in sorted(bundle.iterdir()) if f.is_file()}

    # lossless: greedy speed (fixed γ, adaptive) == large, token for token
    check = subprocess.run([sys.executable, "-c", LOSSLESS, str(bundle), json.dumps(PROMPTS), str(a.max_new_tokens),
                            str(a.block_length), str(a.threads)], capture_output=True, text=True, cwd=REPO)
    if check.returncode:
        raise SystemExit(f"lossless check failed:\n{check.stderr[-3000:]}")
    record["lossless"] = json.loads(check.stdout.strip().splitlines()[-1])

    bench_out = work / "bench"
    run([*TANDEM, "bench", str(bundle), "--modes", "speed,adaptive", "--block-lengths",
         a.bench_block_lengths or str(a.block_length),
         "--decoding", "greedy", "--max-new-tokens", str(a.max_new_tokens), "--repeats", "1", "--threads",
         str(a.threads), "--out", str(bench_out), "--no-plots", "--cost-reps", "30", "--peers", "none"], work / "bench.log")
    bench = json.loads((bench_out / "results.json").read_text())
    record["costs"] = bench["costs"]
    record["bench_rows"] = [{k: r.get(k) for k in ("label", "tokens_per_second", "speedup", "alpha", "c")}
                            for r in bench["rows"]]
    a.report.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.report}.json").write_text(json.dumps(record, indent=2))  # (the name may hold dots: "1.5b")
    Path(f"{a.report}.md").write_text(render(record))
    print(render(record))
    return 0


LOSSLESS = r"""
import json, sys
import tandem
bundle, prompts, n, gamma, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = tandem.load(bundle, threads=threads)
equal, total = 0, 0
for prompt in prompts:
    want = model.generate(prompt, mode="large", max_new_tokens=n, ignore_eos=True).ids
    for block in (gamma, "auto"):
        got = model.generate(prompt, mode="speed", block_length=block, max_new_tokens=n, ignore_eos=True).ids
        total += 1
        equal += got == want
print(json.dumps({"generations": total, "equal_to_large": equal, "tokens_each": n}))
"""


def render(r: dict) -> str:
    cfg, steps = r["large_config"], r["steps"]
    costs = r["costs"]
    lines = [
        f"# Drafter pipeline on {cfg['model_type']} (width {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
        f"vocabulary {cfg['vocab_size']})",
        "",
        "Written by `scripts/drafter_pipeline.py` on this repo's 2-core CPU. "
        + ("M_L has random weights (costs do not depend on training)." if r["args"].get("random_weights")
           else "M_L is a trained model; the drafter is trained from its precomputed representations."),
        "",
        "| step | command | wall | throughput | peak RSS so far |",
        "| --- | --- | --- | --- | --- |",
    ]
    before = r.get("reps_complete_shards_before")
    resumed = f" (resumed after {before} complete shards)" if before else ""
    rates = {"reps": f"{r['reps']['tokens_per_second']:.0f} tokens/s over the last run{resumed}",
             "train": f"{r['train']['training_tokens_per_second'] or 0:.0f} tokens/s", "export": ""}
    for name, s in steps.items():
        lines.append(f"| {name} | `{s['command']}` | {s['seconds'] / 60:.1f} min | {rates[name]} | "
                     f"{s['peak_rss_mb_so_far'] / 1e3:.2f} GB |")
    extra = r["reps"]["extra"]
    lossless = r["lossless"]
    c = costs["c"].get("tandem_drafter")
    lines += [
        "",
        f"- reps: {r['reps']['tokens']} tokens of layers {r['reps']['layers']} + top-{r['reps']['top_k']} teacher, "
        f"{r['reps']['storage_mb']:.0f} MB on disk; M_L via {r['reps']['engine']} {r['reps']['precision']}; RSS "
        f"{extra.get('rss_with_model_mb', 0) / 1e3:.2f} GB with M_L loaded, peak {extra.get('peak_rss_mb', 0) / 1e3:.2f} GB.",
        f"- train: {r['train']['steps_done']} steps, final loss {r['train']['final_loss']:.3f}.",
        "- bundle files (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in r["bundle_files_mb"].items()) + ".",
        f"- lossless: {lossless['equal_to_large']}/{lossless['generations']} greedy `speed` generations "
        f"(γ = {r['args']['block_length']} and adaptive, {lossless['tokens_each']} tokens each) equal `large`.",
        f"- c (M_S step / M_L step, dedicated ORT timing, M_L {costs['threads']} threads, drafter "
        f"{costs['drafter_threads']}): **{c:.3f}** (M_S {costs['t_step_ms']['tandem_drafter']:.2f} ms, M_L "
        f"{costs['t_large_ms']['1']:.2f} ms); from the runtime's stats: {costs.get('c_from_stats', {}).get('tandem_drafter', 0):.3f}.",
        "",
        "| bench row | tokens/s | vs large | α |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {b['label']} | {b['tokens_per_second'] or 0:.2f} | {b['speedup'] or 0:.2f} | "
              f"{b['alpha'] if b['alpha'] is None else round(b['alpha'], 3)} |" for b in r["bench_rows"]]
    lines += ["", *(f"Note: {note}" for note in r.get("notes", []))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
