#!/usr/bin/env python
"""The default pair, end to end: SmolLM2-135M-Instruct as M_L, a tandem and a plain drafter.

Every figure the README and the model card give for the default pair comes from the report
this script writes (``--report``, default docs/results/default_pair.{json,md}). Stages, each
skipped when its output exists (delete the folder under ``--work`` to redo one):

1. ``data``: ``scripts/chat_data.py``: code + chat prompts built offline, answered greedily by
   M_L through its chat template; train / valid / held-out splits by subject; the training
   split's M_L representations kept from the generation (layers ``--store-layers``).
2. ``select``: one short tandem run per candidate M_L layer (``--candidate-layers``, block
   lengths drawn from 1..the largest candidate γ), scored by agreement with M_L on the **valid**
   split; the best layer is used from then on. Then γ: that drafter is exported and ``tandem
   bench`` runs on valid-split prompts at each ``--candidate-gammas``; the fastest is γ*.
3. ``train``: a tandem and a plain drafter per seed (``--seeds``), same size (1 layer at M_L's
   width, M_L's embedding and LM head shared and frozen, the same draft vocabulary size), same
   steps, batch, windows and teacher (M_L's top-k from the reps), block lengths drawn from
   1..γ*: the manifest records γ* as the trained γ and the default. ``--jobs`` runs train at
   once (each with ``--threads`` / ``--jobs`` threads).
4. ``eval``: ``tandem eval`` on the **held-out** split at the chosen γ: accuracy, TV to M_L,
   agreement per seed; mean and standard deviation over seeds.
5. ``routers``: the seed-0 pair's adaptive routers refitted (``tandem fit-router``) on the
   **valid** split, against ``--eval-large``: routers fitted on the drafters' own training
   windows are over-confident on new text (the drafters memorise them), and the adaptive rule
   weighs their scores against measured costs, so they must be calibrated.
6. ``bench``: those two committed as the default drafters, the default bundle built from them
   and benchmarked on held-out chat and code prompts (bench/prompts_chat.json) greedy and
   sampled, every mode, ``--bench-repeats`` runs (medians).

    .venv/bin/python scripts/default_pair.py --large build/smollm2 --work build/default_pair
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TANDEM = [sys.executable, "-m", "tandem.cli"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", type=Path, required=True, help="M_L: Hugging Face folder (scripts/smollm2_hf.py)")
    p.add_argument("--work", type=Path, required=True, help="folder for data, drafters, bundle, bench")
    p.add_argument("--report", type=Path, default=REPO / "docs/results/default_pair")
    p.add_argument("--data", type=Path, help="a chat_data.py folder (default: WORK/data)")
    p.add_argument("--reps", type=Path, help="the training reps folder (default: DATA/reps, written by chat_data.py; "
                   "e.g. a `tandem reps` folder computed by the M_L the bundle verifies with)")
    p.add_argument("--reps-large", type=Path, help="the M_L that computed --reps (recorded in the report)")
    p.add_argument("--eval-large", type=Path, help="M_L the held-out and valid figures are measured against "
                   "(default: --large; e.g. scripts/quantized_reference.py's folder: the int4 bundle's M_L)")
    p.add_argument("--max-prompts", type=int, default=2600)
    p.add_argument("--extra-code-prompts", type=int, default=0,
                   help="more training code prompts, answered by the bundle's own M_L through the runtime "
                        "(scripts/onpolicy_data.py, into WORK/data-code); with it, the training reps are computed "
                        "over both data folders by `tandem reps` into WORK/reps")
    p.add_argument("--reps-engine", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="engine of that reps stage: onnxruntime = M_L's int4 graph (what the bundle runs)")
    p.add_argument("--store-layers", default="15,22,26,30")
    p.add_argument("--candidate-layers", default="15,26")
    p.add_argument("--candidate-gammas", default="1,2,3,4")
    p.add_argument("--select-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the final drafters, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="training runs at once (they share --threads)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--bench-gammas", help="fixed γ of the final benchmark (default: --candidate-gammas)")
    p.add_argument("--bench-repeats", type=int, default=3, help="runs of the final benchmark (medians)")
    p.add_argument("--bench-out", type=Path, default=REPO / "bench/results/default-smollm2",
                   help="where the default bundle's benchmark is written")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run a step, its output to `log`; returns its wall time (raises on failure)."""
    print("$", " ".join(str(c) for c in (cmd[2:] if cmd[:2] == TANDEM[:2] else cmd)), flush=True)
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.call([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        raise SystemExit(f"step failed ({code}); see {log}")
    return time.perf_counter() - start


def run_many(steps: list[tuple[list, Path]], jobs: int, threads: int) -> list[float]:
    """Run independent steps, ``jobs`` at a time, each with ``max(1, threads // jobs)`` threads
    (OMP_NUM_THREADS: torch's intra-op pool); their wall times (raises when one fails)."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // max(1, jobs)))}
    times: list[float] = [0.0] * len(steps)
    running: list[tuple[int, subprocess.Popen, float, Path]] = []
    pending = list(enumerate(steps))
    while pending or running:
        while pending and len(running) < jobs:
            i, (cmd, log) = pending.pop(0)
            print("$", " ".join(str(c) for c in (cmd[2:] if cmd[:2] == TANDEM[:2] else cmd)), flush=True)
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("w")
            running.append((i, subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                                cwd=REPO, env=env), time.perf_counter(), log))
            out.close()
        time.sleep(1.0)
        for entry in list(running):
            i, proc, start, log = entry
            if proc.poll() is not None:
                running.remove(entry)
                if proc.returncode:
                    for _, other, _, _ in running:
                        other.terminate()
                    raise SystemExit(f"step failed ({proc.returncode}); see {log}")
                times[i] = time.perf_counter() - start
    return times


def train_cmd(a: argparse.Namespace, data: Path, mode: str, out: Path, layer: int, gamma: int, steps: int,
              seed: int) -> list:
    cmd = [*TANDEM, "train", "--mode", mode, "--large", a.large, "--reps", a.reps or data / "reps", "--layers", "1",
           "--shared-head", "--draft-vocab", a.draft_vocab,
           "--loss", "distil", "--steps", steps, "--batch-size", a.batch_size, "--seq-len", a.seq_len,
           "--block-length", gamma, "--seed", seed, "--out", out, "--no-resume"]
    if mode == "tandem":
        cmd += ["--layer-assignment", layer, "--variable-boundaries"]
    return cmd


def eval_cmd(a: argparse.Namespace, split: Path, models: dict[str, Path], gamma: int, out: Path,
             large: Path | None = None) -> list:
    return [*TANDEM, "eval", "--large", large or a.eval_large or a.large, "--data", split, "--heldout-fraction", "1", "--block-length", gamma,
            "--seq-len", a.seq_len, *[x for name, f in models.items() for x in ("--model", f"{name}={f}")],
            "--json", out]


def reps_complete(folder: Path) -> bool:
    """Whether `tandem reps` finished writing `folder`."""
    from tandem.train.reps import REPS_FILE, RepsSpec

    if not (folder / REPS_FILE).is_file():
        return False
    spec = RepsSpec.load(folder)
    return spec.complete_shards >= spec.num_shards


def kind_counts(records: Path) -> dict:
    """Prompts per kind in a data folder's `SPLIT.jsonl`."""
    rows = [json.loads(x) for x in records.read_text().splitlines()]
    return {"prompts": len(rows), "chat": sum(r["kind"] == "chat" for r in rows),
            "code": sum(r["kind"] == "code" for r in rows)}


def data_summary(data: Path, reps: Path, extra: Path | None = None) -> dict:
    """What the data folder holds: prompts per split and kind (from the answered records), reps;
    `extra`: the on-policy code answers (training split only)."""
    splits = {split: kind_counts(data / f"{split}.jsonl") for split in ("train", "valid", "heldout")}
    if extra is not None:
        splits["train_onpolicy"] = kind_counts(extra / "train.jsonl")
    spec = json.loads((reps / "reps.json").read_text())
    dtype = json.loads((data / "data.json").read_text()).get("dtype", "float32")
    return {"splits": splits, "dtype": dtype,
            "reps": {"folder": str(reps), "tokens": spec["total_windows"] * spec["seq_len"], "layers": spec["layers"],
                     "engine": spec["engine"], "precision": spec.get("precision")}}


def summarize(results: list[dict]) -> dict:
    """Mean and sd over seeds, per drafter kind (model names are KIND-sSEED)."""
    kinds: dict[str, list[dict]] = {}
    for r in results:
        if r["model"] != "M_L":
            kinds.setdefault(r["model"].rsplit("-s", 1)[0], []).append(r)
    out = {}
    for kind, rows in kinds.items():
        out[kind] = {}
        for key in ("accuracy", "tv_to_large", "agreement_with_large"):
            values = [r[key] for r in rows]
            out[kind][key] = {"mean": statistics.fmean(values),
                              "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = a.work.resolve()
    data = (a.data or work / "data").resolve()
    record: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "seconds": {}}

    if not (data / "data.json").is_file():  # chat_data.py writes it last; it resumes an interrupted run
        layers = [] if a.reps else ["--reps-layers", a.store_layers]
        record["seconds"]["data"] = run([sys.executable, REPO / "scripts/chat_data.py", "--large", a.large, "--out", data,
                                         "--max-prompts", a.max_prompts, *layers, "--seq-len", a.seq_len,
                                         "--threads", a.threads], work / "logs/data.log")
    extra = work / "data-code" if a.extra_code_prompts else None
    if extra is not None:
        # on-policy code answers: the int4 M_L the bundle serves, greedy (chat_data.py's answers
        # come from M_L in PyTorch bfloat16, and its training split is mostly chat)
        if not (extra / "data.json").is_file():
            record["seconds"]["data-code"] = run(
                [sys.executable, REPO / "scripts/onpolicy_data.py", "--out", extra, "--kind", "code", "--skip", data,
                 "--max-prompts", a.extra_code_prompts, "--max-new-tokens", a.max_new_tokens, "--threads", a.threads],
                work / "logs/data-code.log")
        if a.reps is None:
            a.reps = work / "reps"
            if not reps_complete(a.reps):  # `tandem reps` resumes an interrupted run
                precision = ["--precision", "int4"] if a.reps_engine == "onnxruntime" else []
                record["seconds"]["reps"] = run(
                    [*TANDEM, "reps", "--large", a.reps_large or a.large, "--engine", a.reps_engine, *precision,
                     "--data", data / "train", extra / "train", "--heldout-fraction", "0",
                     "--rep-layers", a.candidate_layers, "--seq-len", a.seq_len, "--threads", a.threads,
                     "--out", a.reps], work / "logs/reps.log")

    # -- select the layer on the valid split ---------------------------------------------
    gammas = [int(g) for g in a.candidate_gammas.split(",")]
    select = work / "select"
    layers = [int(x) for x in a.candidate_layers.split(",")]
    scores = {}
    run_many([(train_cmd(a, data, "tandem", select / f"tandem-l{layer}", layer, max(gammas), a.select_steps, 0),
               work / f"logs/select-l{layer}.log") for layer in layers
              if not (select / f"tandem-l{layer}" / "training_summary.json").is_file()], a.jobs, a.threads)
    for layer in layers:
        folder = select / f"tandem-l{layer}"
        result = select / f"valid-l{layer}.json"
        if not result.is_file():
            run(eval_cmd(a, data / "valid", {f"tandem-l{layer}": folder}, max(gammas), result),
                work / f"logs/select-eval-l{layer}.log")
        scores[layer] = next(r for r in json.loads(result.read_text()) if r["model"] != "M_L")
    layer = max(layers, key=lambda x: scores[x]["agreement_with_large"])
    record["select_layer"] = {"scores": scores, "chosen": layer, "by": "agreement with M_L on the valid split"}

    # -- select γ on the valid split: speed of the selected drafter ------------------------
    valid_prompts = select / "valid_prompts.json"
    records = [json.loads(x) for x in (data / "valid.jsonl").read_text().splitlines()]
    picks = [r for r in records if r["kind"] == "chat"][:4] + [r for r in records if r["kind"] == "code"][:4]
    valid_prompts.write_text(json.dumps([{"name": f"valid{i}", "chat": r["text"]} for i, r in enumerate(picks)]))
    gamma_bundle, gamma_bench = select / "bundle", select / "bench"
    if not (gamma_bench / "results.json").is_file():
        run([*TANDEM, "export", "--large", a.large, "--tandem", select / f"tandem-l{layer}", "--out", gamma_bundle,
             "--precision", "int4"], work / "logs/select-export.log")
        run([*TANDEM, "bench", gamma_bundle, "--prompts", valid_prompts, "--modes", "speed",
             "--block-lengths", a.candidate_gammas, "--decoding", "greedy", "--max-new-tokens", a.max_new_tokens,
             "--repeats", "1", "--threads", a.threads, "--out", gamma_bench, "--no-plots", "--peers", "none"],
            work / "logs/select-bench.log")
    rows = json.loads((gamma_bench / "results.json").read_text())["rows"]
    speed = {int(r["block_length"]): r["speedup"] for r in rows if r.get("mode") == "speed" and r.get("block_length")}
    record["select_gamma"] = {"speedup_vs_large": speed, "fastest": max(speed, key=lambda g: speed[g]),
                              "by": "greedy speed/large on valid-split prompts"}
    # The final drafters train at the fastest γ on valid (block lengths drawn from 1..γ*); the
    # manifest records γ* as the trained γ and the default block length.
    gamma = record["select_gamma"]["fastest"]

    # -- the drafters ---------------------------------------------------------------------
    seeds = [int(s) for s in a.seeds.split(",")]
    drafters: dict[str, Path] = {f"{mode}-s{seed}": work / f"{mode}-s{seed}"
                                 for seed in seeds for mode in ("tandem", "plain")}
    todo = [(name, folder) for name, folder in drafters.items() if not (folder / "training_summary.json").is_file()]
    times = run_many([(train_cmd(a, data, name.split("-")[0], folder, layer, gamma, a.steps,
                                 int(name.rsplit("-s", 1)[1])), work / f"logs/train-{name}.log")
                      for name, folder in todo], a.jobs, a.threads)
    record["seconds"].update({f"train-{name}": t for (name, _), t in zip(todo, times, strict=True)})
    record["training"] = {name: json.loads((f / "training_summary.json").read_text()) for name, f in drafters.items()}

    heldout = work / "heldout.json"
    if not heldout.is_file():
        run(eval_cmd(a, data / "heldout", drafters, gamma, heldout), work / "logs/heldout.log")
    record["heldout"] = json.loads(heldout.read_text())
    record["heldout_summary"] = summarize(record["heldout"])
    seed0 = {k: v for k, v in drafters.items() if k.endswith(f"-s{seeds[0]}")}
    if a.eval_large and a.eval_large.resolve() != a.large.resolve():
        # the same held-out texts scored against --large too: how far the bundle's M_L is from it
        source = work / "heldout_large.json"
        if not source.is_file():
            run(eval_cmd(a, data / "heldout", seed0, gamma, source, large=a.large), work / "logs/heldout_large.log")
        record["heldout_vs_large"] = json.loads(source.read_text())
    # the same figures on training texts (as many tokens as held out): the gap is what the drafters memorise
    train_sample = work / "train_sample.json"
    if not train_sample.is_file():
        run(eval_cmd(a, data / "train", seed0, gamma, train_sample), work / "logs/train_sample.log")
    record["train_sample"] = json.loads(train_sample.read_text())

    # the committed drafters are these folders (`python -m tandem.runtime.default --install-drafters`); the
    # default bundle is built from them and M_L's GGUF, exactly what `tandem.load()` uses
    # The stage is keyed on a copy kept in the work folder, so a results file already in
    # --bench-out (say, the committed one of an earlier pair) is replaced rather than reused.
    routed = work / "routed"
    for role in ("tandem", "plain"):
        folder = routed / role
        if not (routed / f"{role}.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(drafters[f"{role}-s{seeds[0]}"], folder)
            run([*TANDEM, "fit-router", "--drafter", folder, "--large", a.eval_large or a.large,
                 "--data", data / "valid", "--heldout-fraction", "0"], work / f"logs/routers-{role}.log")
            summary = json.loads((folder / "training_summary.json").read_text())
            (routed / f"{role}.json").write_text(json.dumps(summary["router"], indent=2))
    record["routers"] = {role: {"valid": json.loads((routed / f"{role}.json").read_text()),
                                "train": record["training"][f"{role}-s{seeds[0]}"].get("router")}
                         for role in ("tandem", "plain")}
    bench, bench_done = a.bench_out, work / "bench_results.json"
    if not bench_done.is_file():
        run([sys.executable, "-m", "tandem.runtime.default", "--install-drafters", routed / "tandem",
             routed / "plain", "--large", a.large], work / "logs/install.log")
        run([*TANDEM, "bench", "--prompts", REPO / "bench/prompts_chat.json",
             "--modes", "speed,vanilla,adaptive", "--block-lengths", a.bench_gammas or a.candidate_gammas,
             "--decoding", "greedy,sampled", "--max-new-tokens", a.max_new_tokens, "--repeats", a.bench_repeats,
             "--threads", a.threads, "--out", bench, "--peers", "none", "--wait-idle", "60"], work / "logs/bench.log")
        shutil.copyfile(bench / "results.json", bench_done)
    record["bench"] = json.loads(bench_done.read_text())
    record["data"] = data_summary(data, (a.reps or data / "reps").resolve(), extra)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.report}.json").write_text(json.dumps(record, indent=2))
    Path(f"{a.report}.md").write_text(render(record))
    print(render(record))
    return 0


def drafter_table(results: list[dict], reference: str) -> list[str]:
    """`tandem eval --json` rows of the drafters (M_L's own row left out) as a markdown table."""
    return [f"| drafter | accuracy | TV to {reference} | agreement with {reference} |", "| --- | --- | --- | --- |",
            *(f"| {x['model']} | {x['accuracy']:.3f} | {x['tv_to_large']:.3f} | {x['agreement_with_large']:.3f} |"
              for x in results if x["model"] != "M_L")]


def render(r: dict) -> str:
    lines = ["# The default pair: SmolLM2-135M-Instruct + tandem and plain drafters", "",
             "Written by `scripts/default_pair.py` on this repo's 2-core CPU.", ""]
    d = r["data"]["splits"]
    lines += [f"- data: M_L's greedy answers ({r['data'].get('dtype', 'float32')}) to {d['train']['prompts']} "
              "training prompts "
              f"({d['train']['chat']} chat, {d['train']['code']} code); valid {d['valid']['prompts']}, held-out "
              f"{d['heldout']['prompts']} prompts (subjects disjoint)."
              + (f" Plus {d['train_onpolicy']['prompts']} more training prompts ({d['train_onpolicy']['code']} code) "
                 "answered greedily by the bundle's own int4 M_L through the runtime (`scripts/onpolicy_data.py`)."
                 if "train_onpolicy" in d else ""),
              f"- training reps and teacher: {r['data']['reps']['tokens']} tokens, `{r['data']['reps'].get('folder', '?')}` "
              f"(engine {r['data']['reps']['engine']}, M_L `{r['args'].get('reps_large') or r['args']['large']}`); "
              f"held-out and valid figures against M_L `{r['args'].get('eval_large') or r['args']['large']}`.",
              "- layer (valid agreement): " + ", ".join(
                  f"{k}: {v['agreement_with_large']:.3f}" for k, v in r["select_layer"]["scores"].items())
              + f" → **{r['select_layer']['chosen']}**",
              "- γ (valid greedy speed/large): " + ", ".join(
                  f"{k}: {v:.2f}" for k, v in r["select_gamma"]["speedup_vs_large"].items())
              + f" → **{r['select_gamma']['fastest']}** (the final drafters train with block lengths drawn "
              f"from 1..{r['select_gamma']['fastest']}; the selection drafter with 1.."
              f"{max(int(g) for g in r['args']['candidate_gammas'].split(','))})",
              "",
              "## Held-out evaluation (mean ± sd over seeds)", "",
              "| drafter | accuracy | TV to M_L | agreement with M_L |", "| --- | --- | --- | --- |"]
    for kind, m in r["heldout_summary"].items():
        seeds = len(m["accuracy"]["values"])
        lines.append(f"| {kind} ({seeds} seed{'s' if seeds > 1 else ''}) | " + " | ".join(
            f"{m[k]['mean']:.3f}" + (f" ± {m[k]['sd']:.3f}" if seeds > 1 else "")
            for k in ("accuracy", "tv_to_large", "agreement_with_large")) + " |")
    large = next(x for x in r["heldout"] if x["model"] == "M_L")
    lines += ["", f"M_L's own held-out accuracy: {large['accuracy']:.3f} ({large['tokens']} tokens)."]
    if r.get("heldout_vs_large"):
        src = r["heldout_vs_large"]
        m_l = next(x for x in src if x["model"] == "M_L")
        lines += ["", f"The same held-out texts against `{r['args']['large']}` (the model the bundle is quantized from; "
                  f"its accuracy: {m_l['accuracy']:.3f}):", "", *drafter_table(src, "it")]
    if r.get("train_sample"):
        src = r["train_sample"]
        m_l = next(x for x in src if x["model"] == "M_L")
        lines += ["", f"Training texts ({m_l['tokens']} tokens of the train split; M_L's accuracy there: "
                  f"{m_l['accuracy']:.3f}); their gap to the held-out figures is what the drafters memorise:", "",
                  *drafter_table(src, "M_L")]
    if r.get("routers"):
        lines += ["", "## Adaptive routers (seed 0, the committed drafters)", "",
                  "Fitted after training on the drafter's own training windows, then refitted on the valid split "
                  "(the committed ones): BCE of the greedy router vs a constant, mean |error| of the sampled one.", "",
                  "| drafter | fitted on | greedy accept rate | greedy BCE (constant) | sampled mean target | "
                  r"sampled \|error\| (constant) |", "| --- | --- | --- | --- | --- | --- |"]
        for role, fits in r["routers"].items():
            for split, f in fits.items():
                if f:
                    lines.append(f"| {role} | {split} | {f['greedy_accept_rate']:.3f} | {f['greedy_bce']:.3f} "
                                 f"({f['greedy_bce_constant']:.3f}) | {f['sampled_mean_target']:.3f} | "
                                 f"{f['sampled_mean_abs_error']:.3f} ({f['sampled_mean_abs_error_constant']:.3f}) |")
    repeats = r["bench"].get("settings", {}).get("repeats", 1)
    lines += ["", f"## Benchmark (held-out prompts, bench/prompts_chat.json, {repeats} run{'s' if repeats > 1 else ''}"
              f"{', medians' if repeats > 1 else ''})", ""]
    bench_md = Path(r["args"]["bench_out"]) / "results.md"
    if bench_md.is_file():
        lines.append(f"See `{bench_md.relative_to(REPO) if bench_md.is_relative_to(REPO) else bench_md}` for every "
                     "column; summary:")
    lines += ["", "| config | tok/s | vs large | α |", "| --- | --- | --- | --- |"]
    for row in r["bench"]["rows"]:
        alpha = row.get("alpha")
        lines.append(f"| {row['label']} | {row['tokens_per_second'] or 0:.1f} | {row['speedup'] or 0:.2f} | "
                     f"{'–' if alpha is None else f'{alpha:.2f}'} |")
    gamma_bench = json.loads((Path(r["args"]["work"]) / "select" / "bench" / "results.json").read_text())
    load = gamma_bench.get("idle", {}).get("load_at_start", ["?"])[0]
    lines += ["", "## Notes", "",
              f"- The γ bench on valid prompts started at a 1-min load of {load} on 2 cores; its ratios are "
              "from one run.",
              "- Greedy: every `speed`, `vanilla` and adaptive generation equals `large` token for token "
              "(column `greedy == large` of the bench table)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
