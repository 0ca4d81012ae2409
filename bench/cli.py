"""`tandem bench`: sweep modes × block lengths × greedy/sampled on a bundle, against peers.

    tandem bench                           # the default bundle, full sweep, peers hf+ortgenai
    tandem bench BUNDLE --quick            # smoke run: 2 prompts, γ ∈ {2, 4}, 16 tokens, no peers
    tandem bench --modes speed,vanilla --block-lengths 2,4,8 --decoding greedy --repeats 5

Writes results.json, results.md, speedup.png and acceptance.png into --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tandem.bench.errors import BenchArgumentError, BenchError
from tandem.errors import InvalidArgumentError

HERE = Path(__file__).resolve().parent
DEFAULT_PROMPTS = HERE / "prompts.json"
DEFAULT_BLOCKS = (1, 2, 3, 4, 6, 8)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"block lengths must be integers >= 1, got {text!r}")
    return values


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (comma-separated), got {text!r}")
        return values
    return parse


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from tandem.bench.peers import PEERS
    from tandem.bench.sweep import MODES

    p = sub.add_parser(
        "bench", help="benchmark modes, block lengths and peers on a bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Sweep decoding modes × block lengths × greedy/sampled on one bundle and report, per\n"
            "configuration: tokens/s (median of repeats), speedup vs `large` (same run), acceptance α,\n"
            "tokens per round E, the cost ratios c (M_S step / M_L step) and v (M_L pass over the\n"
            "round's tokens / M_L step) from dedicated ORT timing runs, the bound E/(s·c+v) they\n"
            "imply, achieved/bound, loop overhead share and peak memory. Peers on the same pair:\n"
            "transformers plain vs assisted generation, ONNX Runtime GenAI plain vs speculative.\n"
            "Waits for an idle CPU (1-min load <= --max-load) before timing."),
        epilog=(
            "examples:\n"
            "  tandem bench --quick /path/to/bundle          smoke run (seconds)\n"
            "  tandem bench --threads 2                       full run on the default bundle\n"
            "  tandem bench B --hf-large L --hf-draft D       peers for a non-default bundle\n"
            "outputs: --out/results.json, results.md, speedup.png, acceptance.png"),
    )
    p.add_argument("bundle", nargs="?", type=Path,
                   help="bundle folder (default: the default model, built locally on first use)")
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS,
                   help="JSON list of prompts: strings, {\"name\", \"prompt\"} (raw text) or {\"name\", \"chat\"} "
                   "(a user message formatted with the bundle's chat template) (default: bench/prompts.json)")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES),
                   help=f"comma-separated subset of {','.join(MODES)} (large always runs: it is the baseline)")
    p.add_argument("--block-lengths", type=_int_list, default=list(DEFAULT_BLOCKS),
                   help="γ values for tandem/speed/vanilla (default: 1,2,3,4,6,8)")
    p.add_argument("--decoding", type=_choices(("greedy", "sampled")), default=["greedy", "sampled"],
                   help="greedy, sampled or both (default: greedy,sampled)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt (EOS ignored)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts; tokens/s is their median")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of sampled runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every system (default: 2)")
    p.add_argument("--out", type=Path, help="output folder (default: bench/results/<timestamp>/)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 prompts, γ in {2,4}, 16 tokens, 1 repeat, no idle wait, no peers")
    p.add_argument("--max-load", type=float, default=0.5, help="1-min load average that counts as idle")
    p.add_argument("--wait-idle", type=float, default=300.0,
                   help="seconds to wait for an idle CPU before timing anyway, with a warning (default: 300)")
    p.add_argument("--cost-reps", type=int, default=50, help="timed calls per graph for c and v")
    p.add_argument("--peers", type=_choices((*PEERS, "none")), default=None,
                   help="peers to run: hf,ortgenai or none (default: both; none with --quick)")
    p.add_argument("--hf-large", type=Path, help="Hugging Face folder of M_L (default bundle: converted from its GGUF into the cache, "
                        "`python -m tandem.runtime.default --hf-folder large`)")
    p.add_argument("--hf-draft", type=Path, help="Hugging Face folder of the plain drafter (default bundle: its committed plain drafter, "
                        "restored; none when it has none)")
    p.add_argument("--peers-python", help="interpreter of the venv with onnxruntime-genai "
                                          "(default: $TANDEM_PEERS_PYTHON or <repo>/.venv-peers/bin/python)")
    p.add_argument("--peer-block-length", type=int,
                   help="γ of the peers' speculative decoding (default: the bundle's default block length)")
    p.add_argument("--peer-precision", choices=("fp32", "fp16", "int8", "int4"),
                   help="precision of the ortgenai peer's model build (default: the bundle's precision; "
                        "int8/int4 use the GenAI builder's CPU default accuracy_level=4)")
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds per peer process")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run_bench)


class _Progress:
    """A progress bar over configurations on stderr (one line per step when not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, what: str) -> None:
        self.done += 1
        frac = self.done / max(1, self.total)
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        eta = (time.monotonic() - self.start) / self.done * (self.total - self.done)
        msg = f"[{bar}] {self.done}/{self.total} eta {eta:4.0f}s {what}"
        if self.tty:
            sys.stderr.write("\r" + msg[:110].ljust(110))
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def load_prompts(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BenchError(f"cannot read the prompt set {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("prompts")
    if not isinstance(data, list) or not data:
        raise BenchError(f"{path}: expected a non-empty JSON list of prompts (or {{\"prompts\": [...]}})")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"name": f"p{i}", "prompt": item}
        if isinstance(item, dict) and isinstance(item.get("chat"), str) and item["chat"] and "prompt" not in item:
            out.append({"name": str(item.get("name", f"p{i}")), "chat": item["chat"]})
            continue
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise BenchError(f"{path}: prompt {i} must be a non-empty string, {{\"name\", \"prompt\"}} (raw text) "
                             "or {\"name\", \"chat\"} (a user message, formatted with the bundle's chat template)")
        out.append({"name": str(item.get("name", f"p{i}")), "prompt": item["prompt"]})
    return out


def _check(args: argparse.Namespace) -> None:
    for name in ("max_new_tokens", "repeats", "cost_reps"):
        if getattr(args, name) < 1:
            raise BenchArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from tandem.runtime import check_threads  # the runtime's cap, before the output folder is made

    try:
        check_threads("--threads", args.threads, "one per core")
    except InvalidArgumentError as exc:
        raise BenchArgumentError(str(exc)) from None
    if args.wait_idle < 0 or args.max_load < 0:
        raise BenchArgumentError("--wait-idle and --max-load must be >= 0")
    if args.temperature <= 0:
        raise BenchArgumentError(f"--temperature must be > 0, got {args.temperature}")


def run_bench(args: argparse.Namespace) -> int:
    from tandem.bench import machine, peers, report, sweep
    from tandem.bench.costs import measure_costs
    from tandem.runtime import load
    from tandem.runtime.default import hf_folder

    _check(args)
    if args.quick:
        args.block_lengths = [b for b in args.block_lengths if b in (2, 4)] or [2, 4]
        args.max_new_tokens = min(args.max_new_tokens, 16)
        args.repeats = 1
        args.wait_idle = 0.0
        args.cost_reps = min(args.cost_reps, 5)
    peer_names = [] if (args.peers is None and args.quick) else (args.peers or list(peers.PEERS))
    peer_names = [p for p in peer_names if p != "none"]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    out = args.out or HERE / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output folder {out}: {exc}") from exc
    prompt_set = load_prompts(args.prompts)

    is_default = args.bundle is None
    model = load(args.bundle, threads=args.threads)
    if model.tokenizer is None:
        raise BenchError(f"{model.bundle_path} ships no tokenizer.json: the benchmark needs text prompts")
    prompts = [model.apply_chat_template([{"role": "user", "content": p["chat"]}], tokenize=True) if "chat" in p
               else model.encode(p["prompt"]) for p in prompt_set]
    notes_fit: list[str] = []
    spare = max(args.block_lengths) + 2  # a speculative round may look γ+1 past the last token
    fits = [len(ids) + 4 + spare <= model.context_length for ids in prompts]
    if not any(fits):
        raise BenchError(f"no prompt of {args.prompts} leaves room for 4 new tokens in the context "
                         f"({model.context_length} tokens); use shorter prompts")
    if not all(fits):
        dropped = [p["name"] for p, ok in zip(prompt_set, fits, strict=True) if not ok]
        notes_fit.append(f"prompts {', '.join(dropped)} skipped: too long for the context ({model.context_length})")
        prompt_set = [p for p, ok in zip(prompt_set, fits, strict=True) if ok]
        prompts = [ids for ids, ok in zip(prompts, fits, strict=True) if ok]
    if args.quick:
        prompt_set, prompts = prompt_set[:2], prompts[:2]
    room = model.context_length - max(map(len, prompts)) - spare
    if room < args.max_new_tokens:
        notes_fit.append(f"--max-new-tokens {args.max_new_tokens} does not fit the context "
                         f"({model.context_length}); using {room}")
        args.max_new_tokens = room
    for note in notes_fit:
        log("note: " + note)

    configs, notes = sweep.make_configs(args.modes, args.block_lengths, args.decoding, model.modes)
    warnings = notes_fit + notes
    idle = machine.wait_for_idle(args.max_load, args.wait_idle, log=log)
    if idle.get("warning"):
        warnings.append(idle["warning"])
        log("warning: " + idle["warning"])

    mean_prompt = sum(map(len, prompts)) // len(prompts)
    widths = sorted({1, *args.block_lengths, *(b + 1 for b in args.block_lengths), model.manifest.max_block_length + 1})
    log(f"measuring c and v ({args.cost_reps} calls per graph and width)")
    costs = measure_costs(model.bundle_path, args.threads, mean_prompt + args.max_new_tokens // 2, widths,
                          args.cost_reps)

    # the c and β the adaptive rule uses (measured by the runtime, once per drafter, before the runs)
    for mode in sorted({c.mode for c in configs if c.block == "auto"}):
        draft, verify = model._model.decode_costs(mode)
        costs.setdefault("adaptive_rule", {})[mode] = {"c": draft, "beta": verify}
        log(f"adaptive {mode}: the runtime measured c = {draft:.3f}, β = {verify:.3f} (M_L steps)")

    progress = _Progress(len(configs) * args.repeats)
    runs = sweep.run_sweep(model, configs, prompts, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                           temperature=args.temperature, seed=args.seed, progress=progress)
    rows = sweep.summarize(runs, costs)
    large_ids = next((r.first_ids for c, r in runs.items() if c.mode == "large" and not c.sample), None)
    # c from the runs' own stats, for comparison with the dedicated timing runs
    large_row = next((r for r in rows if r["label"] == "large greedy" and r.get("large_ms_per_call")), None)
    if large_row:
        for role, mode in (("tandem_drafter", "speed"), ("plain_drafter", "vanilla")):
            steps = [r["drafter_ms_per_call"] for r in rows if r["mode"] == mode and r.get("drafter_ms_per_call")
                     and isinstance(r["block_length"], int)]
            if steps:
                costs.setdefault("c_from_stats", {})[role] = (sum(steps) / len(steps)) / large_row["large_ms_per_call"]
        costs["c_from_stats_note"] = ("mean M_S ms/call over the fixed-γ runs ÷ M_L ms/call of `large greedy`; "
                                      "M_L's mean includes the prefill call, M_S's the memory appends")

    peer_block = args.peer_block_length or model.manifest.default_block_length
    peer_precision = args.peer_precision or model.manifest.precision
    peer_results: dict[str, Any] = {}
    if peer_names:
        # absolute: the peers run in their own working folders
        # the default model: M_L converted from its GGUF, the committed plain drafter restored (in the cache)
        large_dir = args.hf_large.resolve() if args.hf_large else (hf_folder("large") if is_default else None)
        draft_dir = args.hf_draft.resolve() if args.hf_draft else (
            hf_folder("plain") if is_default and "vanilla" in model.modes else None)
        log(f"peers: {', '.join(peer_names)} (γ = {peer_block}, ortgenai at {peer_precision})")
        peer_results = peers.run_peers(
            peer_names, large=large_dir, draft=draft_dir, prompts=prompts, max_new_tokens=args.max_new_tokens,
            repeats=args.repeats, threads=args.threads, block_length=peer_block,
            work=machine.REPO / "build" / "bench_peers", python=peers.peers_python(args.peers_python),
            timeout=args.peer_timeout, precision=peer_precision)
        for name, res in peer_results.items():
            for system, why in res.get("errors", {}).items():
                log(f"peer {name} {system}: {why}")
    peer_rows = peers.peer_rows(peer_results, rows, peer_block, large_ids)
    for res in peer_results.values():  # keep the committed JSON small
        for s in res.get("systems", {}).values():
            s.pop("first_ids", None)

    results = {
        "command": "tandem bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else "tandem bench (API)",
        "created": datetime.now().isoformat(timespec="seconds"),
        "bundle": {"path": str(model.bundle_path), "name": "default" if is_default else model.bundle_path.name,
                   "modes": model.modes, "precision": model.manifest.precision,
                   "default_block_length": model.manifest.default_block_length,
                   "context_length": model.context_length, "vocab_size": model.vocab_size},
        "settings": {"quick": args.quick, "modes": args.modes, "block_lengths": args.block_lengths,
                     "decoding": args.decoding, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                     "temperature": args.temperature, "seed": args.seed, "threads": args.threads,
                     "reference_block_length": peer_block, "peers": peer_names,
                     "peer_precision": peer_precision},
        "machine": machine.describe(args.threads),
        "idle": idle,
        "load_at_end": machine.loadavg(),
        "warnings": warnings,
        "prompts": [{"name": p["name"], "tokens": len(ids)} for p, ids in zip(prompt_set, prompts, strict=True)],
        "costs": costs,
        "rows": rows,
        "peers_requested": peer_names,
        "peers": peer_results,
        "peer_rows": peer_rows,
        "peak_rss_mb": machine.peak_rss_mb(),
    }
    files = report.write(results, out, with_plots=not args.no_plots)
    print(report.markdown(results))
    log(f"wrote {', '.join(files)} to {out}")
    return 0
