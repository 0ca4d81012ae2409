"""A bounded load test of `tandem serve`: concurrent streaming clients on loopback.

    python -m tandem.bench.serve_load                         # the default model, 16 clients x 20 requests
    python -m tandem.bench.serve_load BUNDLE --clients 4 --requests 5 --max-tokens 16

Starts `tandem serve` in a subprocess on a free loopback port, then:
1. a sequential baseline: one client, one streamed request at a time (the same prompts);
2. the load: `--clients` clients at once, each sending `--requests` streamed requests back to back.
Every request is greedy (temperature 0) with EOS ignored, so every answer must equal the
sequential greedy result of `TandemModel.generate` with the same options, computed in this
process beforehand: a lost, truncated or mixed-up response is counted as a mismatch. Reports
latency (send to [DONE]) and time to first token (send to the first text chunk) as p50 / p90 /
p99, throughput (completion tokens / wall time) and its ratio to the sequential baseline of the
same run, and every non-200 status. Writes results.json, results.md and latency.png (with
matplotlib) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tandem.bench.errors import BenchArgumentError, BenchError

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "serve-load"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tandem.bench.serve_load",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=("outputs: --out/results.json, results.md, latency.png\n"
                "traffic goes to 127.0.0.1 only; the run is bounded by --clients x --requests and --timeout"),
    )
    p.add_argument("bundle", nargs="?", type=Path,
                   help="bundle folder (default: the default model, built locally on first use)")
    p.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (default: 16)")
    p.add_argument("--requests", type=int, default=20, help="requests per client, back to back (default: 20)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer, EOS ignored (default: 32)")
    p.add_argument("--mode", choices=("large", "tandem", "speed", "vanilla"),
                   help="decoding mode of every request (default: speed when the bundle has it)")
    p.add_argument("--block-length", default=None, help="γ, or 'auto' (default: the bundle's)")
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="the server's concurrent generations (default: 2, as `tandem serve`)")
    p.add_argument("--queue-size", type=int,
                   help="the server's queue (default: --clients, so the load never meets a 429)")
    p.add_argument("--threads", type=int, default=2, help="the server's M_L intra-op threads (default: 2)")
    p.add_argument("--prompts", type=Path, default=HERE / "prompts.json",
                   help="JSON list of prompts (default: bench/prompts.json)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole load phase (default: 900)")
    p.add_argument("--note", default="", help="a line about the machine for the report (e.g. 'shared')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--no-plots", action="store_true", help="skip latency.png")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("clients", "requests", "max_tokens", "max_concurrent"):
        if getattr(args, name) < 1:
            raise BenchArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.clients * args.requests > 100_000:
        raise BenchArgumentError("--clients x --requests is capped at 100000 requests: the load test is bounded")
    if args.queue_size is not None and args.queue_size < 0:
        raise BenchArgumentError(f"--queue-size must be >= 0, got {args.queue_size}")
    if args.timeout <= 0:
        raise BenchArgumentError(f"--timeout must be > 0, got {args.timeout}")
    if args.block_length not in (None, "auto"):
        try:
            args.block_length = int(args.block_length)
        except ValueError:
            raise BenchArgumentError(f"--block-length must be an integer or 'auto', got {args.block_length!r}") \
                from None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# --------------------------------------------------------------------------- the server


class ServerProcess:
    """`tandem serve` in a subprocess on a free loopback port."""

    def __init__(self, bundle: Path, args: argparse.Namespace, model_id: str) -> None:
        command = [sys.executable, "-m", "tandem.cli", "serve", str(bundle), "--host", "127.0.0.1", "--port", "0",
                   "--model-id", model_id, "--threads", str(args.threads),
                   "--max-concurrent", str(args.max_concurrent),
                   "--queue-size", str(args.queue_size if args.queue_size is not None else args.clients),
                   "--max-tokens", str(args.max_tokens), "--no-access-log", "--log-level", "warning"]
        self.command = command
        env = {k: v for k, v in os.environ.items() if k != "TANDEM_API_KEY"}
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""
        assert self.proc.stderr is not None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if " on http://" in line:
                self.url = line.split(" on ", 1)[1].split()[0].removesuffix("/v1")
                break
        if not self.url:
            self.stop()
            raise BenchError("`tandem serve` did not start:\n" + "".join(lines[-20:]))
        self.log_tail: list[str] = []
        # keep reading its log, so that a full pipe never blocks the server
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_tail = [*self.log_tail[-49:], line]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_drain"):
            self._drain.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- clients


async def one_request(http: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion: status, text, first-token and total latency, final stats."""
    start = time.perf_counter()
    out: dict[str, Any] = {"status": None, "text": "", "ttft": None, "latency": None, "finish_reason": None,
                           "usage": None, "tandem": None, "error": None, "done": False}
    pieces = []
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["error"] = (await r.aread()).decode(errors="replace")[:300]
                out["latency"] = time.perf_counter() - start
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    out["done"] = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["error"] = chunk["error"].get("message")
                    continue
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        if out["ttft"] is None:
                            out["ttft"] = time.perf_counter() - start
                        pieces.append(choice["text"])
                    if choice.get("finish_reason"):
                        out["finish_reason"] = choice["finish_reason"]
                if "usage" in chunk:
                    out["usage"] = chunk["usage"]
                if "tandem" in chunk:
                    out["tandem"] = chunk["tandem"]
    except Exception as exc:  # noqa: BLE001 - a failed request is a result to report
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["latency"] = time.perf_counter() - start
    out["text"] = "".join(pieces)
    return out


async def run_clients(url: str, bodies: list[list[dict[str, Any]]], timeout: float,
                      progress: Any = None) -> tuple[list[list[dict[str, Any]]], float]:
    """Each list of bodies is one client's requests, sent back to back; all clients at once."""
    import httpx

    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as http:
        async def client(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
            results = []
            for body in requests:
                results.append(await one_request(http, url, body))
                if progress:
                    progress()
            return results

        start = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(client(b) for b in bodies)), timeout)
        return list(results), time.perf_counter() - start


def summarize(results: list[dict[str, Any]], wall: float, refs: dict[int, Any], prompt_index: list[int],
              max_tokens: int) -> dict[str, Any]:
    lat = [r["latency"] for r in results if r["status"] == 200 and r["done"]]
    ttft = [r["ttft"] for r in results if r["status"] == 200 and r["ttft"] is not None]
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r["status"]) if r["status"] is not None else "no response"
        statuses[key] = statuses.get(key, 0) + 1
    mismatches = []
    tokens = 0
    for r, p in zip(results, prompt_index, strict=True):
        ref = refs[p]
        got_tokens = (r["usage"] or {}).get("completion_tokens")
        ok = (r["status"] == 200 and r["done"] and r["text"] == ref.text and got_tokens == len(ref.ids)
              and r["error"] is None)
        if ok:
            tokens += got_tokens
        else:
            mismatches.append({"prompt": p, "status": r["status"], "error": r["error"], "done": r["done"],
                               "text_equal": r["text"] == ref.text, "completion_tokens": got_tokens})
    gen_tps = [r["tandem"]["stats"]["tokens_per_second"] for r in results
               if r.get("tandem") and r["tandem"]["stats"].get("tokens_per_second")]
    gen_ttft = [r["tandem"]["stats"]["time_to_first_token"] for r in results
                if r.get("tandem") and r["tandem"]["stats"].get("time_to_first_token") is not None]
    return {
        "requests": len(results), "ok": len(results) - len(mismatches), "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:5], "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500),
        "wall_s": wall, "completion_tokens": tokens,
        "throughput_tok_s": tokens / wall if wall > 0 else None,
        "requests_per_s": len(results) / wall if wall > 0 else None,
        "latency_s": {f"p{q}": percentile(lat, q) for q in (50, 90, 99)} | {"max": max(lat) if lat else None},
        "ttft_s": {f"p{q}": percentile(ttft, q) for q in (50, 90, 99)} | {"max": max(ttft) if ttft else None},
        # the runtime's own figures per generation (from the `tandem` stats): without HTTP and queueing
        "generation_tok_s_mean": sum(gen_tps) / len(gen_tps) if gen_tps else None,
        "generation_ttft_s": {f"p{q}": percentile(gen_ttft, q) for q in (50, 99)},
        "max_tokens": max_tokens,
        "_latencies": lat, "_ttfts": ttft,
    }


# --------------------------------------------------------------------------- report


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1e3:.1f}"


def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    seq, load = results["sequential"], results["load"]
    lines = [
        f"# tandem serve load test — {results['bundle']['name']}",
        "",
        f"`{results['command']}`",
        "",
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; {m['platform']}; python {m['python']}; "
        f"onnxruntime {m['versions'].get('onnxruntime')}; commit {m.get('git_commit')}"
        + (f"; **{s['note']}**" if s.get("note") else ""),
        f"- server: `tandem serve` ({s['max_concurrent']} concurrent generations, queue {s['queue_size']}, "
        f"{s['threads']} M_L threads) on 127.0.0.1 in its own process; clients: httpx (asyncio) in this one",
        f"- every request: streamed, greedy (temperature 0), {s['max_tokens']} tokens (EOS ignored), mode "
        f"{s['mode']}, block length {s['block_length']}; {len(results['prompts'])} prompts in rotation",
        f"- 1-min load average: {results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after",
        "",
        "| phase | clients × requests | ok / total | 5xx | other non-200 | tok/s | req/s "
        "| latency p50 / p90 / p99 ms | first token p50 / p90 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row, shape in (("sequential", seq, f"1 × {seq['requests']}"),
                             ("load", load, f"{s['clients']} × {s['requests']}")):
        other = sum(n for k, n in row["statuses"].items() if k != "200") - row["server_errors_5xx"]
        lat, ttft = row["latency_s"], row["ttft_s"]
        lines.append(
            f"| {name} | {shape} | {row['ok']} / {row['requests']} | {row['server_errors_5xx']} | {other} "
            f"| {_f(row['throughput_tok_s'], 0)} | {_f(row['requests_per_s'], 1)} "
            f"| {_ms(lat['p50'])} / {_ms(lat['p90'])} / {_ms(lat['p99'])} "
            f"| {_ms(ttft['p50'])} / {_ms(ttft['p90'])} / {_ms(ttft['p99'])} |")
    lines += [
        "",
        "The runtime's own stats per generation (no HTTP, no queueing): "
        + "; ".join(f"{name} {_f(row['generation_tok_s_mean'], 0)} tok/s mean, first token p50 / p99 "
                    f"{_ms(row['generation_ttft_s']['p50'])} / {_ms(row['generation_ttft_s']['p99'])} ms"
                    for name, row in (("sequential", seq), ("load", load))) + ".",
    ]
    r = results["ratios"]
    lines += [
        "",
        f"Load ÷ sequential, same server and run: throughput **{_f(r['throughput'], suffix='×')}**, p50 latency "
        f"{_f(r['latency_p50'], suffix='×')}, p50 first token {_f(r['ttft_p50'], suffix='×')}.",
        "",
        f"Every answer compared with `TandemModel.generate` (sequential, greedy, same options): "
        f"{load['mismatches'] + seq['mismatches']} mismatches in {load['requests'] + seq['requests']} requests. "
        "Server after the run: " + ", ".join(f"{k} {v}" for k, v in results["health_after"].items()) + ".",
    ]
    for w in results.get("warnings", []):
        lines.append(f"\n**warning**: {w}")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], lat: dict[str, list[float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "latency", "latency (send → [DONE])"),
                           (axes[1], "ttft", "time to first token")):
        for phase in ("sequential", "load"):
            xs = sorted(v * 1e3 for v in lat[f"{phase}_{key}"])
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=phase)
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("share of requests")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    s = results["settings"]
    fig.suptitle(f"tandem serve on {results['bundle']['name']}: {s['clients']} clients × {s['requests']} "
                 f"streamed requests, {s['max_concurrent']} concurrent generations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tandem.bench import machine
    from tandem.bench.cli import load_prompts
    from tandem.runtime import load
    from tandem.runtime.server import require_serve_dependencies

    _check(args)
    require_serve_dependencies()
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise BenchError("the load test's clients need httpx: pip install httpx") from None
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    is_default = args.bundle is None
    if is_default:
        from tandem.runtime.default import default_bundle

        bundle = default_bundle()
    else:
        bundle = args.bundle
    model = load(bundle, threads=args.threads)
    if model.tokenizer is None:
        raise BenchError(f"{model.bundle_path} ships no tokenizer.json: the load test sends text prompts")
    mode = args.mode or ("speed" if "speed" in model.modes else "large")
    prompt_set = load_prompts(args.prompts)
    spare = args.max_tokens + model.manifest.max_block_length + 2
    prompts = [p["prompt"] for p in prompt_set if len(model.encode(p["prompt"])) + spare <= model.context_length]
    if not prompts:
        raise BenchError(f"no prompt of {args.prompts} leaves room for {args.max_tokens} tokens in the context "
                         f"({model.context_length}); pass a smaller --max-tokens")

    log(f"sequential greedy references for {len(prompts)} prompts ({mode}, γ {args.block_length or 'default'})")
    refs = {i: model.generate(p, mode=mode, block_length=args.block_length, max_new_tokens=args.max_tokens,
                              ignore_eos=True) for i, p in enumerate(prompts)}
    model_id = "tandem-default" if is_default else Path(bundle).resolve().name
    body = {"model": model_id, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "mode": mode, "ignore_eos": True}
    if args.block_length is not None:
        body["block_length"] = args.block_length

    def request(i: int) -> dict[str, Any]:
        return {**body, "prompt": prompts[i]}

    import httpx

    load_before = machine.loadavg()
    server = ServerProcess(Path(bundle), args, model_id)
    log(f"`tandem serve` at {server.url}")
    try:
        # warm-up (not timed): one request per prompt
        seq_index = list(range(len(prompts)))
        asyncio.run(run_clients(server.url, [[request(i) for i in seq_index]], args.timeout))
        seq_index = seq_index * 2
        seq_results, seq_wall = asyncio.run(run_clients(server.url, [[request(i) for i in seq_index]],
                                                        args.timeout))
        log(f"sequential: {len(seq_index)} requests in {seq_wall:.2f}s")
        indices = [[(c + j) % len(prompts) for j in range(args.requests)] for c in range(args.clients)]
        total = args.clients * args.requests
        done = [0]

        def progress() -> None:
            done[0] += 1
            if done[0] % max(1, total // 20) == 0 or done[0] == total:
                frac = done[0] / total
                log(f"[{'#' * int(24 * frac)}{'.' * (24 - int(24 * frac))}] {done[0]}/{total} requests")

        load_results, load_wall = asyncio.run(run_clients(
            server.url, [[request(i) for i in idx] for idx in indices], args.timeout, progress))
        health_after = httpx.get(f"{server.url}/health").json()
    finally:
        server.stop()
    load_after = machine.loadavg()

    seq = summarize(seq_results[0], seq_wall, refs, seq_index, args.max_tokens)
    flat = [r for client in load_results for r in client]
    flat_index = [i for idx in indices for i in idx]
    loaded = summarize(flat, load_wall, refs, flat_index, args.max_tokens)
    latencies = {"sequential_latency": seq.pop("_latencies"), "sequential_ttft": seq.pop("_ttfts"),
                 "load_latency": loaded.pop("_latencies"), "load_ttft": loaded.pop("_ttfts")}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    warnings = []
    if max(load_before[0], load_after[0]) > 0.5:
        warnings.append(f"the CPU was not idle (1-min load {load_before[0]:.2f} before, {load_after[0]:.2f} after): "
                        "timings are noisy; compare only ratios from the same run")
    if loaded["mismatches"] or seq["mismatches"]:
        warnings.append(f"{loaded['mismatches'] + seq['mismatches']} responses differ from the sequential greedy "
                        "result or failed; see mismatch_examples")
    command = "python -m tandem.bench.serve_load " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith("serve_load.py") else "python -m tandem.bench.serve_load (API)"
    return {
        "command": command,
        "created": datetime.now().isoformat(timespec="seconds"),
        "bundle": {"path": str(model.bundle_path), "name": "default" if is_default else Path(bundle).name,
                   "modes": model.modes, "precision": model.manifest.precision,
                   "context_length": model.context_length},
        "settings": {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
                     "mode": mode, "block_length": args.block_length or model.manifest.default_block_length,
                     "max_concurrent": args.max_concurrent,
                     "queue_size": args.queue_size if args.queue_size is not None else args.clients,
                     "threads": args.threads, "timeout_s": args.timeout, "note": args.note,
                     "server_command": " ".join(shlex.quote(c) for c in server.command[1:])},
        "machine": machine.describe(args.threads),
        "load_before": load_before, "load_after": load_after,
        "prompts": [{"tokens": len(model.encode(p))} for p in prompts],
        "sequential": seq, "load": loaded,
        "ratios": {"throughput": ratio(loaded["throughput_tok_s"], seq["throughput_tok_s"]),
                   "latency_p50": ratio(loaded["latency_s"]["p50"], seq["latency_s"]["p50"]),
                   "ttft_p50": ratio(loaded["ttft_s"]["p50"], seq["ttft_s"]["p50"])},
        "health_after": {k: health_after.get(k) for k in ("active", "queued", "completed", "cancelled", "rejected",
                                                          "failed")},
        "warnings": warnings,
        "_latencies": latencies,
    }


def write(results: dict[str, Any], out: Path, with_plots: bool = True) -> list[str]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output folder {out}: {exc}") from exc
    latencies = results.pop("_latencies")
    results["latencies_ms"] = {k: [round(v * 1e3, 2) for v in vs] for k, vs in latencies.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    files = ["results.json", "results.md"]
    if with_plots and plot(results, latencies, out / "latency.png"):
        files.append("latency.png")
    return files


def main(argv: list[str] | None = None) -> int:
    from tandem.errors import TandemError

    args = build_parser().parse_args(argv)
    try:
        results = run(args)
        files = write(results, args.out, with_plots=not args.no_plots)
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown(results))
    print(f"wrote {', '.join(files)} to {args.out}", file=sys.stderr)
    bad = results["load"]["mismatches"] + results["sequential"]["mismatches"] + results["load"]["server_errors_5xx"]
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
