#!/usr/bin/env python
"""Does training from precomputed M_L representations match training with M_L in the loop?

On the tiny test-fixture M_L (a trained 4M-parameter Llama, tests/fixtures/tiny) and the CPython standard-library
corpus of ``scripts/train_tiny.py``, one tandem M_S configuration is trained for the same
steps, batch, schedule and seeds three ways:

- ``in-loop``: M_L runs at every step on random windows of the training stream;
- ``shards (hidden)``: from a reps folder whose teacher is M_L's final hidden state (logits
  recomputed through M_L's head at training time);
- ``shards (top-k)``: from a reps folder whose teacher is M_L's top-64 log-probabilities.

The reps folders cover the same training-token prefix that the in-loop runs sample from, so
all three see the same data. Every drafter is evaluated on the same held-out windows with M_L
in the loop (``tandem.train.evaluate``). Writes JSON + a markdown table (default
``docs/results/reps_vs_inloop.{json,md}``), with the cost of each way.

    .venv/bin/python scripts/reps_vs_inloop.py                 # ~25 min on 2 cores
    .venv/bin/python scripts/reps_vs_inloop.py --quick --report /tmp/q
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import train_tiny as td  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stdlib", type=Path, default=td.DEFAULT_STDLIB, help="CPython 3.11 Lib folder")
    p.add_argument("--large", type=Path, default=REPO / "tests/fixtures/tiny/large", help="trained M_L folder (default: the tiny pair's)")
    p.add_argument("--work", type=Path, default=REPO / "build/reps_vs_inloop")
    p.add_argument("--report", type=Path, default=REPO / "docs/results/reps_vs_inloop")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--tokens", type=int, default=400_000, help="training-stream prefix precomputed and sampled")
    p.add_argument("--layers", type=int, default=1, help="M_S layers")
    p.add_argument("--hidden", type=int, default=128, help="M_S width")
    p.add_argument("--layer-assignment", default="2")
    p.add_argument("--block-length", type=int, default=4)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="60 files, 30 steps, 1 seed: a smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.seeds, a.tokens, a.eval_windows = 30, [0], 40_000, 16
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    from tandem.train.data import Corpus, TextTokenizer, consecutive_windows
    from tandem.train.evaluate import evaluate, format_table
    from tandem.train.model import create_drafter, create_drafter_config, create_tandem
    from tandem.train.reps import RepsReader, precompute
    from tandem.train.trainer import TrainConfig, Trainer

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = td.build_file_list(a.stdlib, a.quick)
    corpus = Corpus.build([str(f) for f in files], TextTokenizer.load(a.large), td.HELDOUT_FRACTION)
    windows = a.tokens // a.seq_len
    prefix = corpus.train[: windows * (a.seq_len + 1)]
    print(f"data: {prefix.numel()} training tokens used of {corpus.train.numel()}, {corpus.heldout.numel()} held out")
    large = AutoModelForCausalLM.from_pretrained(a.large, dtype=torch.float32).eval()
    small_config = create_drafter_config(large.config, a.layers, a.hidden)
    layers = [int(x) for x in a.layer_assignment.split(",")]
    times: dict[str, float] = {}

    readers = {}
    for teacher in ("hidden", "topk"):
        start = time.perf_counter()
        spec = precompute(a.large, prefix, layers, work / f"reps-{teacher}", seq_len=a.seq_len, engine="torch",
                          precision="fp32", distil=teacher, threads=a.threads)
        times[f"precompute ({teacher})"] = time.perf_counter() - start
        readers[teacher] = RepsReader(work / f"reps-{teacher}")
        print(f"reps {teacher}: {spec.total_windows} windows, layers {spec.layers}")

    def config(seed: int) -> TrainConfig:
        return TrainConfig(mode="tandem", steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, seed=seed,
                           block_length=a.block_length, variable_boundaries=True, device="cpu",
                           warmup_steps=min(50, a.steps // 5), router_batches=0, checkpoint_every=0)

    drafters, losses = {}, {}
    for seed in a.seeds:
        for way in ("in-loop", "shards (hidden)", "shards (top-k)"):
            name = f"{way}, seed {seed}"
            small = create_drafter(large, small_config, seed=seed)
            tandem = create_tandem(large, small, a.layer_assignment, seed=seed)
            if way == "in-loop":
                trainer = Trainer(tandem, large, Corpus(prefix, corpus.heldout), config(seed), work / f"m-{seed}-loop")
            else:
                reader = readers["hidden" if "hidden" in way else "topk"]
                trainer = Trainer(tandem, large, None, config(seed), work / f"m-{seed}-{way[8:-1]}", reps=reader)
            start = time.perf_counter()
            losses[name] = trainer.train(resume=False)
            times[f"train {name}"] = time.perf_counter() - start
            drafters[name] = trainer.model.eval()

    eval_windows = consecutive_windows(corpus.heldout, a.seq_len + 1, a.eval_windows)
    results = evaluate(large, drafters, eval_windows, a.block_length, 16, "cpu", progress=True)
    print(format_table(results))
    by_name = {r["model"]: r for r in results}
    summary = {}
    for way in ("in-loop", "shards (hidden)", "shards (top-k)"):
        acc = [by_name[f"{way}, seed {s}"]["accuracy"] for s in a.seeds]
        tv = [by_name[f"{way}, seed {s}"]["tv_to_large"] for s in a.seeds]
        train_s = [times[f"train {way}, seed {s}"] for s in a.seeds]
        summary[way] = {"accuracy": acc, "tv_to_large": tv, "train_seconds": train_s,
                        "final_loss": [losses[f"{way}, seed {s}"][-1] for s in a.seeds]}
    record = {
        "command": ".venv/bin/python scripts/reps_vs_inloop.py"
                   + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "cpu": cpu_name(), "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "train_tokens_used": prefix.numel(), "heldout_tokens": corpus.heldout.numel(),
        "eval_tokens": results[0]["tokens"], "summary": summary, "times_s": times,
        "storage_mb": {t: sum(f.stat().st_size for f in (work / f"reps-{t}").glob("*.npy")) / 1e6
                       for t in ("hidden", "topk")},
        "eval": results,
    }
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.with_suffix(".json").write_text(json.dumps(record, indent=2))
    a.report.with_suffix(".md").write_text(render(record))
    print(render(record))
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def render(record: dict) -> str:
    args = record["args"]
    lines = [
        "# Training from precomputed M_L representations vs M_L in the loop",
        "",
        f"Written by `{record['command']}`. M_L: the tiny test-fixture M_L (trained, 4M parameters); "
        f"M_S: {args['layers']} layer(s) of width {args['hidden']} reading M_L layer {args['layer_assignment']}, "
        f"Tandem-CE then Tandem-Distil, γ = {args['block_length']} (variable boundaries), {args['steps']} steps "
        f"of {args['batch_size']} × {args['seq_len']} tokens, seeds {args['seeds']}. All three ways sample from the "
        f"same {record['train_tokens_used']} training tokens; held-out evaluation on {record['eval_tokens']} tokens "
        f"with M_L in the loop. CPU: {record['cpu']}, torch {record['torch']}.",
        "",
        "| way | held-out accuracy (mean ± sd over seeds) | TV to M_L | train s/run | storage |",
        "| --- | --- | --- | --- | --- |",
    ]
    for way, s in record["summary"].items():
        acc, tv = s["accuracy"], s["tv_to_large"]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        store = {"shards (hidden)": "hidden", "shards (top-k)": "topk"}.get(way)
        storage = f"{record['storage_mb'][store]:.0f} MB" if store else "—"
        lines.append(f"| {way} | {statistics.mean(acc):.4f} ± {sd:.4f} | {statistics.mean(tv):.4f} | "
                     f"{statistics.mean(s['train_seconds']):.0f} | {storage} |")
    lines += ["", "Precompute: " + ", ".join(f"{k} {v:.0f} s" for k, v in record["times_s"].items()
                                             if k.startswith("precompute")) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
