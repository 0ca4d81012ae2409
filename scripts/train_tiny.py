#!/usr/bin/env python
"""Train the tiny M_L / M_S pair of ``tests/fixtures/tiny`` (issue 6, part 1; it was the runtime's
default pair until SmolLM2-135M-Instruct replaced it, and stays as the fast test fixture).

One script, CPU only, deterministic seeds:

1. file list: ``*.py`` of the CPython 3.11 standard library (top level + a few packages,
   no test folders), pinned by a sorted list with per-file SHA-256 (``data_files.txt``);
   held-out split by file content hash (``tandem.train.data.heldout_score``, 5 %);
2. byte-level BPE tokenizer (HF ``tokenizers``) trained on the training files only;
3. M_L: Llama from scratch (plain next-token CE);
4. tandem M_S: 1 layer, Tandem-CE then Tandem-Distil, variable block boundaries, + routers;
5. plain M_S: same size, Distil only (vanilla speculative decoding baseline), + routers
   (greedy and sampled, train/router.py);
6. fp16 safetensors HF folders ``{large,tandem,plain}/`` in ``--out``;
7. ``tandem eval`` on the held-out split, ``c`` measured with PyTorch single-token steps,
   and ``MODEL_CARD.md`` written from the measured numbers.

    .venv/bin/python scripts/train_tiny.py                 # full run (~45-60 min on 2 cores)
    .venv/bin/python scripts/train_tiny.py --quick --out /tmp/td-quick   # smoke run (~2 min)
    .venv/bin/python scripts/train_tiny.py --refit-routers  # only refit the tiny pair's routers
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the running interpreter's standard library (the tiny pair was trained on CPython 3.11.7's;
# tests/fixtures/tiny/data_files.txt lists every file with its SHA-256)
DEFAULT_STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ("asyncio", "collections", "concurrent", "email", "http", "importlib", "json", "logging",
            "multiprocessing", "urllib", "xml")
EXCLUDED_PARTS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}
HELDOUT_FRACTION = 0.05


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "tests/fixtures/tiny",
                   help="output folder: large/, tandem/, plain/, MODEL_CARD.md, data_files.txt")
    p.add_argument("--work", type=Path, help="scratch folder for checkpoints (default: build/train_default[_quick])")
    p.add_argument("--stdlib", type=Path, default=DEFAULT_STDLIB, help="CPython 3.11 Lib folder")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, few files, few steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--large-layers", type=int, default=4)
    p.add_argument("--large-hidden", type=int, default=256)
    p.add_argument("--large-heads", type=int, default=4)
    p.add_argument("--large-kv-heads", type=int, default=2)
    p.add_argument("--large-intermediate", type=int, default=704)
    p.add_argument("--large-steps", type=int, default=240)
    p.add_argument("--large-lr", type=float, default=2e-3)
    p.add_argument("--small-layers", type=int, default=1)
    p.add_argument("--small-hidden", type=int, default=128)
    p.add_argument("--small-heads", type=int, default=2)
    p.add_argument("--small-intermediate", type=int, default=352)
    p.add_argument("--small-steps", type=int, default=400, help="steps of each M_S (tandem and plain)")
    p.add_argument("--small-lr", type=float, default=2e-3)
    p.add_argument("--small-batch-size", type=int, default=8)
    p.add_argument("--small-warmup", type=int, default=20)
    p.add_argument("--block-length", type=int, default=4, help="γ of the tandem training mask and of the eval")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-block-lengths", type=int, nargs="+", help="γ values for tandem eval (default: --block-length)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--refit-routers", action="store_true",
                   help="only refit the routers of --out's tandem/ and plain/ (`tandem fit-router` on the same "
                        "training split) and update train_default.json and MODEL_CARD.md")
    args = p.parse_args()
    if args.quick:
        args.vocab, args.seq_len, args.batch_size = 512, 128, 4
        args.large_layers, args.large_hidden, args.large_heads, args.large_kv_heads = 2, 64, 2, 1
        args.large_intermediate, args.large_steps = 128, 20
        args.small_hidden, args.small_heads, args.small_intermediate, args.small_steps = 32, 1, 64, 20
        args.eval_windows = 8
        args.small_batch_size = 4
    args.work = args.work or REPO / ("build/train_default_quick" if args.quick else "build/train_default")
    return args


# --------------------------------------------------------------------------- data


def build_file_list(stdlib: Path, quick: bool) -> list[Path]:
    """Sorted ``*.py`` files: the top level of Lib plus PACKAGES, without test folders."""
    if not (stdlib / "os.py").is_file():
        raise SystemExit(f"{stdlib} is not a CPython Lib folder (no os.py); pass --stdlib")
    files = [p for p in stdlib.glob("*.py") if p.is_file()]
    for pkg in PACKAGES:
        files += [p for p in (stdlib / pkg).rglob("*.py")
                  if p.is_file() and not EXCLUDED_PARTS & set(p.relative_to(stdlib).parts)]
    files = sorted(set(files), key=lambda p: p.relative_to(stdlib).as_posix())
    return files[:60] if quick else files


def split_files(files: list[Path]) -> tuple[list[Path], list[Path], dict[Path, float]]:
    """Same rule as ``tandem.train.data.Corpus.build``: the files scoring below the fraction are held out."""
    from tandem.train.data import heldout_score

    scores = {f: heldout_score(f.read_bytes()) for f in files}
    ranked = sorted(files, key=lambda f: scores[f])
    n_heldout = max(1, sum(scores[f] < HELDOUT_FRACTION for f in files))
    heldout = set(ranked[:n_heldout])
    return [f for f in files if f not in heldout], [f for f in files if f in heldout], scores


def write_file_list(files: list[Path], heldout: list[Path], stdlib: Path, path: Path) -> str:
    """``sha256  split  relpath`` per file, sorted by path; returns the SHA-256 of this list."""
    held = set(heldout)
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {'heldout' if f in held else 'train  '}  "
             f"{f.relative_to(stdlib).as_posix()}" for f in files]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- helpers


def prepare_data(a: argparse.Namespace, tok_dir: Path, clock: Clock) -> tuple[list[Path], list[Path], Any, Any]:
    """Files, held-out files, tokenizer and corpus for ``a.stdlib`` / ``a.quick`` / ``a.vocab``.

    The byte-level BPE is trained on the training files only, unless ``tok_dir`` already
    holds one of ``a.vocab`` tokens (a rerun)."""
    from tqdm import tqdm

    from tandem.train.data import Corpus, TextTokenizer, train_tokenizer

    files = build_file_list(a.stdlib, a.quick)
    train_files, heldout_files, _ = split_files(files)
    ready = (tok_dir / "tokenizer.json").exists() and TextTokenizer.load(tok_dir).vocab_size == a.vocab
    if not ready:
        texts = (f.read_text(errors="replace") for f in tqdm(train_files, desc="tokenizer: read files"))
        clock.run("tokenizer", train_tokenizer, texts, a.vocab, tok_dir)
    tokenizer = TextTokenizer.load(tok_dir)
    corpus = clock.run("tokenize corpus", Corpus.build, [str(f) for f in files], tokenizer, HELDOUT_FRACTION)
    print(f"data: {corpus.train.numel()} training tokens, {corpus.heldout.numel()} held-out tokens")
    return files, heldout_files, tokenizer, corpus


def new_large(a: argparse.Namespace, tokenizer: Any) -> Any:
    """A from-scratch Llama M_L of ``a.large_*`` (seeded by ``a.seed``), context ``a.seq_len``."""
    import torch
    from transformers import AutoModelForCausalLM

    from tandem.train.model import create_lm_config

    config = create_lm_config("llama", tokenizer.vocab_size, a.large_layers, a.large_hidden, a.large_heads,
                              a.large_kv_heads, a.large_intermediate, a.seq_len, tokenizer.eos_id)
    torch.manual_seed(a.seed)
    return AutoModelForCausalLM.from_config(config).float()




class Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        result = fn(*a, **kw)
        self.times[name] = time.perf_counter() - t
        print(f"=== {name}: {self.times[name]:.1f}s ===", flush=True)
        return result


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def save_fp16(model: Any, folder: Path, extra_files: list[Path]) -> None:
    """Write ``model`` (HF model or TandemSmall) with fp16 safetensors; copy ``extra_files``."""
    import copy

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    half = copy.deepcopy(model).half()
    half.save_pretrained(folder)
    for f in extra_files:
        if f.exists():
            shutil.copy(f, folder / f.name)


def train_one(name: str, model: Any, large: Any, corpus: Any, config: Any, work: Path,
              router: Any = None) -> dict:
    from tandem.train.trainer import Trainer

    trainer = Trainer(model, large, corpus, config, work, router)
    t = time.perf_counter()
    losses = trainer.train(resume=True)
    train_s = time.perf_counter() - t
    record = work / "losses.json"  # a rerun resumes from the checkpoints: keep the losses of the first run
    if record.exists() and len(losses) < config.steps:
        saved = json.loads(record.read_text())
        losses, train_s = saved["losses"][: config.steps - len(losses)] + losses, saved["train_s"] + train_s
    record.write_text(json.dumps({"losses": losses, "train_s": train_s}))
    t = time.perf_counter()
    fit = trainer.fit_router()
    router_s = time.perf_counter() - t
    tail = losses[-20:] if losses else []
    ce_steps = sum(trainer.loss_kind(s) == "ce" for s in range(config.steps))
    return {
        "name": name, "trainer": trainer, "steps": trainer.step, "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "final_loss_mean20": sum(tail) / len(tail) if tail else None,
        "ce_steps": ce_steps, "distil_steps": config.steps - ce_steps,
        "tokens_seen": config.steps * config.batch_size * config.seq_len * config.grad_accum,
        "train_s": train_s, "router_s": router_s, "router_fit": fit.as_dict() if fit else None,
        "config": asdict(config),
    }


# --------------------------------------------------------------------------- c


def measure_c(large: Any, tandem: Any, plain: Any, past_len: int = 256, reps: int = 200) -> dict:
    """Median wall time of single-token PyTorch steps (batch 1, fp32, past ``past_len``)."""
    import torch
    from tqdm import tqdm

    from tandem.train.model import empty_past, large_step, plain_step

    vocab = large.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(vocab, (1, past_len), generator=g)
    x = torch.randint(vocab, (1, 1), generator=g)
    layers = tandem.config.large_layers
    d_l = large.config.hidden_size
    with torch.no_grad():
        _, large_past, reps_l = large_step(large, prompt, empty_past(large.config), layers)
        _, tandem_past, _ = tandem.step(prompt[:, :0], reps_l, empty_past(tandem.small.config))
        _, plain_past = plain_step(plain, prompt, empty_past(plain.config))
        one_mem = [torch.randn(1, 1, d_l, generator=g) for _ in layers]
        no_mem = [torch.zeros(1, 0, d_l) for _ in layers]
        cases = {
            "large": lambda: large_step(large, x, large_past, layers),
            "tandem": lambda: tandem.step(x, no_mem, tandem_past),
            "tandem_1mem": lambda: tandem.step(x, one_mem, tandem_past),
            "plain": lambda: plain_step(plain, x, plain_past),
        }
        samples = {k: [] for k in cases}
        for _ in range(20):
            for f in cases.values():
                f()
        for _ in tqdm(range(reps), desc="measure c"):
            for k, f in cases.items():  # interleaved so that CPU contention hits all alike
                t = time.perf_counter()
                f()
                samples[k].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {"median_ms": ms, "past_len": past_len, "reps": reps,
            "c_tandem": ms["tandem"] / ms["large"], "c_tandem_1mem": ms["tandem_1mem"] / ms["large"],
            "c_plain": ms["plain"] / ms["large"]}


# --------------------------------------------------------------------------- eval


def run_eval(out: Path, files: list[Path], block_length: int, windows: int, seq_len: int, log: Path) -> str:
    """``tandem eval`` (the CLI) on the held-out split; returns its table."""
    cmd = [str(Path(sys.executable).parent / "tandem"), "eval", "--large", str(out / "large"),
           "--model", f"plain={out / 'plain'}", "--model", f"tandem-distil={out / 'tandem'}",
           "--block-length", str(block_length), "--max-windows", str(windows), "--seq-len", str(seq_len),
           "--heldout-fraction", str(HELDOUT_FRACTION), "--device", "cpu",
           "--json", str(log), "--data", *map(str, files)]
    if not Path(cmd[0]).exists():
        cmd[:1] = [sys.executable, "-m", "tandem.cli"]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    print(result.stdout, flush=True)
    return result.stdout.strip()


# --------------------------------------------------------------------------- card


def router_card_lines(batches: int, tandem_fit: dict, plain_fit: dict) -> tuple[str, str]:
    """The card's two lines on the routers: how they were fitted, and what the fit gave."""
    how = (f"Routers: fitted after training on {batches} training batches: the greedy one on the event "
           f"\"M_S's argmax is M_L's\" (BCE), the sampled one on 1 − TV(M_S, M_L) at T = "
           f"{tandem_fit['sampled_temperature']:g} (train/router.py).")

    def figures(fit: dict) -> str:
        return (f"greedy BCE {fit['greedy_bce']:.3f} (constant {fit['greedy_bce_constant']:.3f}, the sampled "
                f"router's scores {fit['greedy_bce_sampled_head']:.3f}; accept rate {fit['greedy_accept_rate']:.3f}), "
                f"sampled mean |error| {fit['sampled_mean_abs_error']:.4f} "
                f"(constant {fit['sampled_mean_abs_error_constant']:.4f})")

    return how, f"Routers on their fitting data: tandem {figures(tandem_fit)}; plain {figures(plain_fit)}."


def write_card(out: Path, a: argparse.Namespace, info: dict) -> None:
    L, T, P = info["large"], info["tandem"], info["plain"]
    c = info["c"]
    sizes = info["sizes_mb"]

    def loss_row(r: dict) -> str:
        return (f"| {r['name']} | {r['steps']} | {r['tokens_seen']:,} | {r['ce_steps']} CE + {r['distil_steps']} Distil "
                f"| {r['final_loss_mean20']:.3f} | {r['train_s'] / 60:.1f} min |")

    router_how, router_figures = router_card_lines(T["config"]["router_batches"], T["router_fit"], P["router_fit"])
    eval_blocks = "\n\n".join(f"Block length γ = {g} (`tandem eval --block-length {g} --max-windows "
                              f"{a.eval_windows} --seq-len {a.seq_len}`):\n\n```\n{t}\n```"
                              for g, t in info["eval_tables"].items())
    text = f"""# Tiny tandem pair (`tests/fixtures/tiny`, a test fixture)

A small Llama M_L trained from scratch, with a 1-layer Tandem-Distil M_S, a plain distilled M_S
(for vanilla speculative decoding) and adaptive-block routers, all trained on one 2-core CPU
by `scripts/train_tiny.py`. They are toy-sized: they exist so that the runtime, exporter,
benchmarks and tests have a real, reproducible pair that loads in milliseconds (`bundle/`: the
pair exported at fp32, regenerated by `make tiny-bundle`). It was the runtime's default pair
until SmolLM2-135M-Instruct replaced it (`tandem/models/default/MODEL_CARD.md`).
{info['status_note']}
Reproduce (CPU, deterministic seeds; {info['total_min']:.0f} min wall on this machine):

```
{info['command']}
```

## Data

- Corpus: the `*.py` files of the **CPython {info['python_version']}** standard library
  (`{a.stdlib}`; PSF License), top level plus the packages {', '.join(f'`{p}`' for p in PACKAGES)};
  folders named {', '.join(f'`{p}`' for p in sorted(EXCLUDED_PARTS))} excluded.
- Pinned list: [`data_files.txt`](data_files.txt), sorted by path, one line per file:
  `sha256  split  path`. {info['n_files']} files, {info['corpus_mb']:.2f} MB;
  SHA-256 of `data_files.txt`: `{info['list_sha256']}`.
- Held-out split: by file content, `tandem.train.data.heldout_score(bytes) < {HELDOUT_FRACTION}`
  (first 8 bytes of the file's SHA-256 / 2^64), the same rule `tandem train/eval --heldout-fraction
  {HELDOUT_FRACTION}` apply: {info['n_heldout']} held-out files ({info['heldout_tokens']:,} tokens),
  {info['n_files'] - info['n_heldout']} training files ({info['train_tokens']:,} tokens). Each file's tokens
  end with `<|endoftext|>`; training samples random windows of {a.seq_len + 1} tokens.
- Tokenizer: byte-level BPE, HF `tokenizers`, vocab {info['vocab']} (EOS `<|endoftext|>`),
  trained on the training files only; `large/tokenizer.json` (copied into every folder).

## Models

| folder | role | architecture | parameters | fp16 size |
| --- | --- | --- | --- | --- |
| `large/` | M_L | Llama, {a.large_layers} layers, width {a.large_hidden}, {a.large_heads} heads / {a.large_kv_heads} KV heads (GQA), MLP {a.large_intermediate}, context {a.seq_len}, untied embeddings | {info['params']['large']:,} | {sizes['large']:.2f} MB |
| `tandem/` | tandem M_S (Tandem-Distil) | Llama, {a.small_layers} layer, width {a.small_hidden}, {a.small_heads} heads, MLP {a.small_intermediate}; `W_T` {a.large_hidden}→{a.small_hidden} reading `x^({info['layer_map']})` (`proportional` = last layer here); routers | {info['params']['tandem']:,} | {sizes['tandem']:.2f} MB |
| `plain/` | plain M_S (Distil) | same as the tandem M_S without `W_T`; routers in `router.safetensors` | {info['params']['plain']:,} | {sizes['plain']:.2f} MB |

Total committed: {sizes['total']:.2f} MB (weights stored fp16; load them as fp32, e.g.
`AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)`, which `TandemSmall.from_pretrained`,
`Router.load` and the exporter do).

## Training

AdamW (β 0.9/0.95, weight decay 0.1), linear warmup then cosine to 0.1×, grad clip 1.0,
fp32 on CPU, `torch.set_num_threads({a.threads})`, seed {a.seed}.
M_L: lr {a.large_lr}, warmup 50, batch {a.batch_size} × {a.seq_len} tokens.
Each M_S: lr {a.small_lr}, warmup {a.small_warmup}, batch {a.small_batch_size} × {a.seq_len} tokens.
Tandem M_S: Tandem-CE for the first half of the steps, then Tandem-Distil (0.5·CE(data) + 0.5·CE(M_L)),
block length γ = {a.block_length} with variable block boundaries (random offset per sequence).
Plain M_S: Distil for all steps, same data, batch and steps.
{router_how}

| model | steps | tokens seen | loss schedule | final loss (mean of last 20 steps) | wall |
| --- | --- | --- | --- | --- | --- |
{loss_row(L)}
{loss_row(T)}
{loss_row(P)}

M_L's loss is next-token CE (nats); the M_S losses in their Distil phase are 0.5·CE + 0.5·soft CE
against M_L, so they are not directly comparable with M_L's.
{router_figures}
Stage wall times (s): {', '.join(f'{k} {v:.0f}' for k, v in info['times'].items())}.

## Held-out evaluation (`tandem eval`)

Next-token accuracy against the data, mean total-variation distance to M_L's next-token
distribution, and agreement of the argmax with M_L's argmax, over non-overlapping held-out windows.
The tandem M_S uses the training-mode block mask with offset 0 (each block sees M_L's
representations of all earlier blocks).

{eval_blocks}

## Cost ratio `c`

`c` = time of one M_S step / time of one M_L step, measured with **PyTorch** single-token steps
(batch 1, fp32, KV cache of {c['past_len']} tokens, median of {c['reps']} interleaved runs,
`torch.set_num_threads({a.threads})`) on {info['cpu']} (shared with other jobs, so
absolute times are noisy; the interleaving keeps the ratio fair):

| step | median ms | c |
| --- | --- | --- |
| M_L (`large_step`, 1 token) | {c['median_ms']['large']:.3f} | 1 |
| tandem M_S (`TandemSmall.step`, 1 token, no memory) | {c['median_ms']['tandem']:.3f} | {c['c_tandem']:.3f} |
| tandem M_S, 1 token + 1 memory row (first step of a round) | {c['median_ms']['tandem_1mem']:.3f} | {c['c_tandem_1mem']:.3f} |
| plain M_S (`plain_step`, 1 token) | {c['median_ms']['plain']:.3f} | {c['c_plain']:.3f} |

## Limits

- These are toy models for the runtime, exporter, tests and benchmarks: M_L saw
  {L['tokens_seen']:,} tokens ({L['tokens_seen'] / max(1, info['train_tokens']):.2f} epochs of the training split),
  far from compute-optimal, and each M_S {T['tokens_seen']:,}. The step counts were chosen so that the
  whole run fits in about an hour on a 2-core CPU that other jobs were also using (they took
  roughly half of it), so the step times above are slower than on an idle machine.
- Held-out numbers are from {a.eval_windows} windows of {a.seq_len} tokens at most (see the token column).

## Files

`large/`: `config.json`, `generation_config.json`, `model.safetensors` (fp16), `tokenizer.json`,
`tokenizer_config.json`, `training_summary.json`. `tandem/`: the M_S HF folder plus
`tandem_config.json` and `tandem.safetensors` (`W_T` + routers, fp16). `plain/`: HF folder plus
`router_config.json` and `router.safetensors` (the two routers, fp16). `train_default.json`: every number above.
"""
    (out / "MODEL_CARD.md").write_text(text)


# --------------------------------------------------------------------------- main


def refresh_sizes(card: str, out: Path, record: dict) -> str:
    """The card's and the record's parameter counts and folder sizes after the routers changed
    (the tandem M_S's count includes its routers, the plain M_S's does not, as in the full run)."""
    from tandem.train.model import TandemSmall

    old_params, old_sizes = dict(record["params"]), dict(record["sizes_mb"])
    record["params"]["tandem"] = params(TandemSmall.from_pretrained(out / "tandem"))
    for key in ("large", "tandem", "plain"):
        record["sizes_mb"][key] = folder_mb(out / key)
    record["sizes_mb"]["total"] = sum(record["sizes_mb"][k] for k in ("large", "tandem", "plain"))
    for key in ("tandem", "plain"):
        card = card.replace(f"| {old_params[key]:,} | {old_sizes[key]:.2f} MB |",
                            f"| {record['params'][key]:,} | {record['sizes_mb'][key]:.2f} MB |")
    return card.replace(f"Total committed: {old_sizes['total']:.2f} MB", f"Total committed: {record['sizes_mb']['total']:.2f} MB")


def refit_shipped_routers(a: argparse.Namespace) -> int:
    """`tandem fit-router` on the shipped tandem/ and plain/ (M_L in the loop, the training split
    of the pinned file list); train_default.json and MODEL_CARD.md get the new figures."""
    import re

    import torch

    from tandem.train.refit import RefitSettings, refit_routers

    torch.set_num_threads(a.threads)
    out = a.out.resolve()
    files = build_file_list(a.stdlib, a.quick)
    train_files, heldout_files, _ = split_files(files)
    if write_file_list(files, heldout_files, a.stdlib, a.work / "data_files.txt") != \
            hashlib.sha256((out / "data_files.txt").read_bytes()).hexdigest():
        raise SystemExit(f"the files under {a.stdlib} differ from {out / 'data_files.txt'}; pass --stdlib")
    record = json.loads((out / "train_default.json").read_text())
    batches = 2 if a.quick else 8
    fits = {}
    for key in ("tandem", "plain"):
        t = time.perf_counter()
        fit = refit_routers(out / key, out / "large", data=[str(f) for f in files], heldout_fraction=HELDOUT_FRACTION,
                            settings=RefitSettings(router_batches=batches, device="cpu"))
        fits[key] = fit.as_dict()
        record[key].pop("router_mae", None)
        record[key]["router_fit"] = fits[key]
        record[key]["router_refit_s"] = time.perf_counter() - t
        record[key]["config"]["router_batches"] = batches
    record["routers_refit"] = ".venv/bin/python scripts/train_tiny.py --refit-routers"
    how, figures = router_card_lines(batches, fits["tandem"], fits["plain"])
    card = refresh_sizes((out / "MODEL_CARD.md").read_text(), out, record)
    (out / "train_default.json").write_text(json.dumps(record, indent=2, default=str))
    minutes = sum(record[k]["router_refit_s"] for k in ("tandem", "plain")) / 60
    how += ("\nThe routers were refit after training with `.venv/bin/python scripts/train_tiny.py --refit-routers`\n"
            f"(`tandem fit-router` on the same training split; {minutes:.1f} min for both drafters on the shared CPU); "
            "the M_S\nweights are those of the run above.")
    card = re.sub(r"^Routers: fitted after training.*?\.\n(?=\n|\|)", how + "\n", card, count=1, flags=re.M | re.S)
    card = re.sub(r"^Router(s on their fitting data| mean absolute error on its fitting data):.*?\.\n", figures + "\n",
                  card, count=1, flags=re.M | re.S)
    (out / "MODEL_CARD.md").write_text(card)
    print(how + "\n" + figures)
    return 0


def main() -> int:
    a = parse_args()
    if a.refit_routers:
        a.work.mkdir(parents=True, exist_ok=True)
        return refit_shipped_routers(a)
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    from tandem.train.model import (
        create_drafter,
        create_drafter_config,
        create_tandem,
    )
    from tandem.train.router import Router, RouterConfig
    from tandem.train.trainer import TrainConfig

    start = time.perf_counter()
    clock = Clock()
    out, work = a.out.resolve(), a.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    # 1-2. files, split, tokenizer (training files only), corpus
    tok_dir = work / "tokenizer"
    files, heldout_files, tokenizer, corpus = prepare_data(a, tok_dir, clock)
    list_sha = write_file_list(files, heldout_files, a.stdlib, out / "data_files.txt")
    corpus_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} files ({corpus_mb:.2f} MB), {len(heldout_files)} held out; list sha256 {list_sha}")

    def cfg(mode: str, steps: int, lr: float, batch_size: int = a.batch_size, warmup: int = 50,
            **kw: Any) -> Any:
        return TrainConfig(mode=mode, steps=steps, lr=lr, batch_size=batch_size, seq_len=a.seq_len,
                           seed=a.seed, device="cpu", router_batches=2 if a.quick else 8,
                           warmup_steps=5 if a.quick else warmup, **kw)

    # 3. M_L
    large = new_large(a, tokenizer)
    L = clock.run("train M_L", train_one, "M_L", large, None, corpus, cfg("lm", a.large_steps, a.large_lr),
                  work / "large")
    large = L["trainer"].model.eval().requires_grad_(False)
    L["trainer"].save(tok_dir, {"final_loss": L["final_loss"]})
    tok_files = [tok_dir / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    save_fp16(large, out / "large", tok_files + [work / "large/training_summary.json"])
    # M_S are trained against M_L as shipped (fp16 weights, run in fp32)
    large = AutoModelForCausalLM.from_pretrained(out / "large", dtype=torch.float32).eval()

    small_config = create_drafter_config(large.config, a.small_layers, a.small_hidden, a.small_heads,
                                         None, a.small_intermediate)

    # 4. tandem M_S (Tandem-CE then Tandem-Distil, variable boundaries) + router
    tandem = create_tandem(large, small_config, "proportional", router=True, seed=a.seed)
    T = clock.run("train tandem M_S", train_one, "tandem M_S (Tandem-Distil)", tandem, large, corpus,
                  cfg("tandem", a.small_steps, a.small_lr, a.small_batch_size, a.small_warmup, loss="ce-then-distil", block_length=a.block_length,
                      variable_boundaries=True), work / "tandem")
    T["trainer"].save(tok_dir, {"final_loss": T["final_loss"], "router": T["router_fit"]})
    save_fp16(T["trainer"].model, out / "tandem", tok_files + [work / "tandem/training_summary.json"])

    # 5. plain M_S (Distil) + router
    plain = create_drafter(large, small_config, seed=a.seed)
    P = clock.run("train plain M_S", train_one, "plain M_S (Distil)", plain, large, corpus,
                  cfg("plain", a.small_steps, a.small_lr, a.small_batch_size, a.small_warmup, loss="distil"), work / "plain",
                  router=Router(RouterConfig(embed_dim=a.small_hidden)))
    P["trainer"].save(tok_dir, {"final_loss": P["final_loss"], "router": P["router_fit"]})
    save_fp16(P["trainer"].model, out / "plain", tok_files + [work / "plain/training_summary.json"])
    P["trainer"].router.half().save(out / "plain")

    # 6. reload what is shipped (fp16 files -> fp32 models), eval, c
    from tandem.train.model import TandemSmall

    large = AutoModelForCausalLM.from_pretrained(out / "large", dtype=torch.float32).eval()
    tandem = TandemSmall.from_pretrained(out / "tandem")
    plain = AutoModelForCausalLM.from_pretrained(out / "plain", dtype=torch.float32).eval()
    assert Router.load(out / "plain") is not None and tandem.router is not None
    tables = {}
    if not a.skip_eval:
        for gamma in a.eval_block_lengths or [a.block_length]:
            tables[gamma] = clock.run(f"tandem eval γ={gamma}", run_eval, out, files, gamma, a.eval_windows,
                                      a.seq_len, work / f"eval_g{gamma}.json")
    c = clock.run("measure c", measure_c, large, tandem, plain, past_len=min(256, a.seq_len - 2),
                  reps=50 if a.quick else 200)
    print(json.dumps(c, indent=2))

    sizes = {k: folder_mb(out / k) for k in ("large", "tandem", "plain")}
    sizes["total"] = sum(sizes.values())
    for stage, r in (("train M_L", L), ("train tandem M_S", T), ("train plain M_S", P)):
        clock.times[stage] = max(clock.times[stage], r["train_s"] + r["router_s"])  # resumed runs: first run's time
    total_min = max(time.perf_counter() - start, sum(clock.times.values())) / 60
    cmd = ".venv/bin/python scripts/train_tiny.py" + (" --quick" if a.quick else "")
    if a.out.resolve() != (REPO / "tests/fixtures/tiny").resolve():
        cmd += f" --out {a.out}"
    info = {
        "command": cmd, "python_version": platform.python_version(),
        "n_files": len(files), "n_heldout": len(heldout_files), "corpus_mb": corpus_mb, "list_sha256": list_sha,
        "train_tokens": corpus.train.numel(), "heldout_tokens": corpus.heldout.numel(),
        "vocab": tokenizer.vocab_size, "layer_map": tandem.config.layer_map[0],
        "params": {"large": params(large), "tandem": params(tandem), "plain": params(plain)},
        "large": L, "tandem": T, "plain": P, "times": clock.times, "c": c, "sizes_mb": sizes,
        "eval_tables": tables, "total_min": total_min,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "status_note": "\n**Quick smoke run: not the shipped models.**\n" if a.quick else "",
        "args": {k: str(v) for k, v in vars(a).items()},
    }
    try:
        model_name = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")][0]
        info["cpu"] = f"{model_name} ({os.cpu_count()} cores visible), torch {torch.__version__}"
    except (OSError, IndexError):
        pass
    write_card(out, a, info)
    record = {k: v for k, v in info.items() if k not in ("large", "tandem", "plain")}
    for key, r in (("large", L), ("tandem", T), ("plain", P)):
        record[key] = {k: v for k, v in r.items() if k not in ("trainer", "losses")}
        record[key]["loss_every_10"] = r["losses"][::10]
    (out / "train_default.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"\ndone in {total_min:.1f} min; sizes {sizes}")
    print((out / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
