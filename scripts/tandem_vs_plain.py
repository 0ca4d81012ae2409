#!/usr/bin/env python
"""Does a Tandem M_S beat a plain M_S of the same size? (issue 3's real training run)

A tiny pair trained from scratch on one 2-core CPU, on the same CPython standard-library
corpus, file list and held-out rule as the tiny pair (``scripts/train_tiny.py``):

1. byte-level BPE tokenizer (training files only);
2. M_L: Llama, plain next-token CE;
3. four M_S of one size (same data order, steps, batch and schedule):
   plain M_S (CE), plain M_S (Distil), Tandem-CE, Tandem-Distil; both Distil models follow
   the paper's schedule, CE first, then Distil, with the same split;
4. ``tandem.train.evaluate`` on the held-out files for each γ in ``--eval-block-lengths``:
   next-token accuracy (overall and by position inside the block), TV distance and argmax
   agreement with M_L;
5. ``--report``: JSON + markdown table (default ``docs/results/tandem_vs_plain.{json,md}``).

    .venv/bin/python scripts/tandem_vs_plain.py                       # full run (~65 min on 2 cores)
    .venv/bin/python scripts/tandem_vs_plain.py --quick --report /tmp/q  # smoke run (~1 min)

Trained models and checkpoints go to ``--work`` (a rerun resumes from them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_tiny as td  # noqa: E402  (the corpus, split and training helpers of the tiny pair)

REPO = td.REPO


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, default=REPO / "docs/results/tandem_vs_plain",
                   help="report path without suffix: writes REPORT.json and REPORT.md")
    p.add_argument("--work", type=Path, help="models and checkpoints (default: build/tandem_vs_plain[_quick])")
    p.add_argument("--stdlib", type=Path, default=td.DEFAULT_STDLIB, help="CPython 3.11 Lib folder")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, few files, few steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--large-layers", type=int, default=4)
    p.add_argument("--large-hidden", type=int, default=192)
    p.add_argument("--large-heads", type=int, default=4)
    p.add_argument("--large-kv-heads", type=int, default=2)
    p.add_argument("--large-intermediate", type=int, default=512)
    p.add_argument("--large-steps", type=int, default=3000)
    p.add_argument("--large-lr", type=float, default=3e-3)
    p.add_argument("--small-layers", type=int, default=1)
    p.add_argument("--small-hidden", type=int, default=64)
    p.add_argument("--small-heads", type=int, default=2)
    p.add_argument("--small-intermediate", type=int, default=176)
    p.add_argument("--small-steps", type=int, default=1000, help="steps of each M_S")
    p.add_argument("--small-lr", type=float, default=3e-3)
    p.add_argument("--layer-assignment", default="2",
                   help="M_L layer read by the tandem M_S: last | proportional | layer numbers (see `tandem train "
                        "--help`); default 2, the middle of the default 4-layer M_L (measured best of 1-4 here)")
    p.add_argument("--layer-ablation", nargs="*", default=["1", "3", "4"], metavar="ASSIGNMENT",
                   help="also train a Tandem-Distil M_S for each of these layer assignments (extra rows; "
                        "pass the flag alone for none)")
    p.add_argument("--train-block-ablation", type=int, nargs="*", default=[4], metavar="GAMMA",
                   help="also train a Tandem-Distil M_S with each of these training block lengths and variable "
                        "block boundaries (extra rows; pass the flag alone for none)")
    p.add_argument("--block-length", type=int, default=2, help="γ of the tandem training mask (paper: 2)")
    p.add_argument("--variable-boundaries", action="store_true", help="random block offset per training sequence")
    p.add_argument("--seed-repeats", type=int, default=3,
                   help="train plain M_S (Distil) and Tandem-Distil with this many drafter seeds (seed, seed+1, ...: "
                        "initialisation, data order and block offsets) to show the spread")
    p.add_argument("--ce-fraction", type=float, default=0.5,
                   help="both Distil models: share of the steps trained with CE before Distil")
    p.add_argument("--eval-block-lengths", type=int, nargs="+", default=[2, 4])
    p.add_argument("--eval-windows", type=int, default=None, help="held-out windows (default: all)")
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.seq_len, args.batch_size = 300, 64, 4
        args.large_layers, args.large_hidden, args.large_heads, args.large_kv_heads = 2, 32, 2, 1
        args.large_intermediate, args.large_steps = 64, 10
        args.small_hidden, args.small_heads, args.small_intermediate, args.small_steps = 16, 1, 32, 6
        args.eval_windows = 8
        args.layer_ablation, args.train_block_ablation = ["1"], [3]  # the quick M_L has 2 layers
        args.seed_repeats = 2
    args.work = args.work or REPO / ("build/tandem_vs_plain_quick" if args.quick else "build/tandem_vs_plain")
    return args


def cpu_name() -> str:
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        return f"{names[0]} ({os.cpu_count()} cores visible)"
    except (OSError, IndexError):
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores visible)"


def render_markdown(record: dict) -> str:
    a, evals = record["args"], record["eval"]
    lines = [
        "# Tandem M_S vs plain M_S on a tiny from-scratch pair",
        "",
        "Produced by `scripts/tandem_vs_plain.py` (issue 3's real training run); every number below was",
        f"measured by that run on {record['cpu']}, torch {record['torch']}, CPU only "
        f"(training {sum(r['train_s'] for r in record['runs'].values()) / 60:.0f} min in all, of which M_L "
        f"{record['runs']['M_L']['train_s'] / 60:.0f} min; a rerun resumes finished models from their checkpoints).",
        "",
        "## Setup",
        "",
        f"- Data: the CPython {record['python_version']} standard-library `*.py` files of the tiny pair "
        f"({record['n_files']} files), held-out split by content hash ({record['n_heldout']} files, "
        f"{record['heldout_tokens']:,} tokens; {record['train_tokens']:,} training tokens).",
        f"- Tokenizer: byte-level BPE, vocab {record['vocab']}, trained on the training files only.",
        f"- M_L: Llama, {a['large_layers']} layers, width {a['large_hidden']}, {a['large_heads']} heads / "
        f"{a['large_kv_heads']} KV heads, MLP {a['large_intermediate']}, {record['params']['large']:,} parameters; "
        f"{a['large_steps']} steps of {a['batch_size']} × {a['seq_len']} tokens, lr {a['large_lr']}.",
        f"- Each M_S: Llama, {a['small_layers']} layer{'s' if a['small_layers'] > 1 else ''}, width {a['small_hidden']}, {a['small_heads']} heads, "
        f"MLP {a['small_intermediate']}, randomly initialised (`create_drafter`; M_L's embeddings are copied only "
        "when the widths match); "
        f"{a['small_steps']} steps of {a['batch_size']} × {a['seq_len']} tokens, lr {a['small_lr']}, same data "
        "order for every M_S. Tandem M_S: + `W_T` "
        f"({a['large_hidden']}→{a['small_hidden']}, layer assignment `{a['layer_assignment']}` = M_L layer "
        f"{record['layer_map']}), {record['params']['tandem']:,} parameters vs {record['params']['plain']:,}.",
        f"- Tandem training mask: block length γ = {a['block_length']}"
        + (", variable block boundaries" if a["variable_boundaries"] else ", fixed boundaries") + "; "
        f"the Distil models (plain and tandem) train with CE for {a['ce_fraction']:.0%} of the steps, "
        "then with 0.5·CE + 0.5·CE(M_L).",
        "- Evaluation: every non-overlapping held-out window of "
        f"{a['seq_len']} tokens; tandem models use the training-mode block mask with offset 0.",
        "",
        "## Results",
        "",
    ]
    for gamma, rows in evals.items():
        lines += [f"### Evaluation block length γ = {gamma}", "",
                  "| model | accuracy | TV to M_L | agreement with M_L | accuracy by block position |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rows:
            by_pos = " / ".join(f"{x:.3f}" for x in r["accuracy_by_block_position"])
            lines.append(f"| {r['model']} | {r['accuracy']:.4f} | {r['tv_to_large']:.4f} | "
                         f"{r['agreement_with_large']:.4f} | {by_pos} |")
        lines += ["", f"{rows[0]['tokens']:,} held-out tokens.", ""]
    seeds = [a["seed"] + k for k in range(a.get("seed_repeats", 1))]
    if len(seeds) > 1:
        lines += ["## Spread over drafter seeds", "",
                  f"Plain M_S (Distil) and Tandem-Distil trained with drafter seeds {', '.join(map(str, seeds))} "
                  "(initialisation, data order, block offsets; M_L fixed). Held-out accuracy:", "",
                  "| eval γ | plain M_S (Distil) | Tandem-Distil | Tandem − plain, per seed |", "| --- | --- | --- | --- |"]
        for gamma, rows in evals.items():
            acc = {r["model"]: r["accuracy"] for r in rows}

            def per_seed(name: str, acc: dict = acc) -> list[float]:
                return [acc[name if s == a["seed"] else f"{name}, seed {s}"] for s in seeds]

            plain, tandem = per_seed("plain M_S (Distil)"), per_seed("Tandem-Distil")
            lines.append(f"| {gamma} | {sum(plain) / len(plain):.4f} ({min(plain):.4f}–{max(plain):.4f}) | "
                         f"{sum(tandem) / len(tandem):.4f} ({min(tandem):.4f}–{max(tandem):.4f}) | "
                         + ", ".join(f"{t - q:+.4f}" for t, q in zip(tandem, plain, strict=True)) + " |")
        lines.append("")
    lines += ["## Training", "", "| model | steps | final loss (mean of last 20 steps) | wall |", "| --- | --- | --- | --- |"]
    for r in record["runs"].values():
        lines.append(f"| {r['name']} | {r['steps']} ({r['ce_steps']} CE + {r['distil_steps']} Distil) | "
                     f"{r['final_loss_mean20']:.3f} | {r['train_s'] / 60:.1f} min |")
    lines += ["", "Distil losses mix CE with soft CE against M_L, so they are not comparable with CE losses.", "",
              "Reproduce:", "", "```", record["command"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from tandem.train.data import consecutive_windows
    from tandem.train.evaluate import LARGE_NAME, evaluate, format_table
    from tandem.train.model import create_drafter, create_drafter_config, create_tandem
    from tandem.train.trainer import TrainConfig

    start = time.perf_counter()
    clock = td.Clock()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    files, heldout_files, tokenizer, corpus = td.prepare_data(a, tok_dir, clock)

    def cfg(mode: str, steps: int, lr: float, loss: str, seed: int = a.seed, **kw: Any) -> TrainConfig:
        return TrainConfig(mode=mode, loss=loss, steps=steps, lr=lr, batch_size=a.batch_size, seq_len=a.seq_len,
                           seed=seed, device="cpu", warmup_steps=5 if a.quick else 100, router_batches=0,
                           **kw)

    large = td.new_large(a, tokenizer)
    runs = {"M_L": clock.run("train M_L", td.train_one, "M_L", large, None, corpus,
                             cfg("lm", a.large_steps, a.large_lr, "ce"), work / "large")}
    large = runs["M_L"]["trainer"].model.eval().requires_grad_(False)
    runs["M_L"]["trainer"].save(tok_dir)

    small_config = create_drafter_config(large.config, a.small_layers, a.small_hidden, a.small_heads, None,
                                         a.small_intermediate)
    tandem_kw = {"block_length": a.block_length, "variable_boundaries": a.variable_boundaries}
    specs = {  # name: (mode, loss, folder, layer assignment, tandem settings, drafter seed)
        "plain M_S (CE)": ("plain", "ce", "plain_ce", "", {}, a.seed),
        "plain M_S (Distil)": ("plain", "ce-then-distil", "plain_distil", "", {}, a.seed),
        "Tandem-CE": ("tandem", "ce", "tandem_ce", a.layer_assignment, tandem_kw, a.seed),
        "Tandem-Distil": ("tandem", "ce-then-distil", "tandem_distil", a.layer_assignment, tandem_kw, a.seed),
    }
    for assignment in a.layer_ablation:
        specs[f"Tandem-Distil, ℓ = {assignment}"] = ("tandem", "ce-then-distil", f"tandem_distil_l{assignment}",
                                                     assignment, tandem_kw, a.seed)
    for gamma in a.train_block_ablation:
        specs[f"Tandem-Distil, trained γ = {gamma} variable"] = (
            "tandem", "ce-then-distil", f"tandem_distil_g{gamma}v", a.layer_assignment,
            {"block_length": gamma, "variable_boundaries": True}, a.seed)
    for k in range(1, a.seed_repeats):
        for name in ("plain M_S (Distil)", "Tandem-Distil"):
            mode, loss, folder, assignment, kw, _ = specs[name]
            specs[f"{name}, seed {a.seed + k}"] = (mode, loss, f"{folder}_s{a.seed + k}", assignment, kw, a.seed + k)
    drafters = {}
    for name, (mode, loss, folder, assignment, kw, seed) in specs.items():
        small = create_drafter(large, small_config, seed=seed)
        model = create_tandem(large, small, assignment, seed=seed) if mode == "tandem" else small
        runs[name] = clock.run(f"train {name}", td.train_one, name, model, large, corpus,
                               cfg(mode, a.small_steps, a.small_lr, loss, seed, ce_fraction=a.ce_fraction, **kw),
                               work / folder)
        runs[name]["trainer"].save(tok_dir)
        drafters[name] = runs[name]["trainer"].model.eval()

    windows = consecutive_windows(corpus.heldout, a.seq_len + 1, a.eval_windows)
    evals = {}
    for gamma in a.eval_block_lengths:
        evals[str(gamma)] = clock.run(f"eval γ={gamma}", evaluate, large, drafters, windows, gamma, 16, "cpu",
                                      progress=True)
        print(format_table(evals[str(gamma)]), flush=True)

    tandem_model = drafters["Tandem-Distil"]
    record = {
        "command": ".venv/bin/python scripts/tandem_vs_plain.py"
                   + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "python_version": platform.python_version(), "cpu": cpu_name(), "torch": torch.__version__,
        "n_files": len(files), "n_heldout": len(heldout_files),
        "train_tokens": corpus.train.numel(), "heldout_tokens": corpus.heldout.numel(),
        "vocab": tokenizer.vocab_size, "layer_map": tandem_model.config.layer_map,
        "params": {"large": td.params(large), "tandem": td.params(tandem_model),
                   "plain": td.params(drafters["plain M_S (Distil)"])},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "runs": {k: {f: v for f, v in r.items() if f not in ("trainer", "losses", "config")}
                 | {"loss_every_10": r["losses"][::10], "config": r["config"]} for k, r in runs.items()},
        "eval": evals, "times_s": clock.times, "total_min": (time.perf_counter() - start) / 60,
    }
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    a.report.with_suffix(".md").write_text(render_markdown(record))
    for gamma, rows in evals.items():
        acc = {r["model"]: r["accuracy"] for r in rows}
        best_plain = max(acc["plain M_S (CE)"], acc["plain M_S (Distil)"])
        verdict = "beats" if acc["Tandem-Distil"] > best_plain else "does NOT beat"
        print(f"γ={gamma}: Tandem-Distil {acc['Tandem-Distil']:.4f} {verdict} the best plain M_S "
              f"{best_plain:.4f} (M_L {acc[LARGE_NAME]:.4f})")
    print(f"wrote {a.report.with_suffix('.md')} and .json in {record['total_min']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
