"""Peer: ONNX Runtime GenAI, plain greedy and speculative decoding with the plain drafter.

Runs in its own virtual environment (onnxruntime-genai pins its own onnxruntime):

    <peers-venv>/bin/python peer_ortgenai.py REQUEST.json RESULT.json

REQUEST: {"large": dir, "draft": dir, "work": dir, "prompts": [[ids]], "max_new_tokens": n,
          "repeats": r, "threads": t, "max_draft_tokens": γ,
          optional: "precision": fp32|fp16|int8|int4 (default fp32), "draft_threads": t
          (default: threads), "systems": ["greedy", "speculative"] (default both; run one per
          process for a clean peak RSS), "build_only": true (build, time nothing)}

The ONNX models are built once per (source folder, precision) into `work/builds/` with the
package's model builder,

    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p P -e cpu -c CACHE
        [--extra_options accuracy_level=4]        (int4 / int8: the builder's CPU default, made explicit)

with HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1, and reused while the source files and the
options are unchanged; the result carries each build's command, wall time and peak RSS
(`os.wait4` rusage of the builder process, through a small launcher: `run_measured`),
measured when it was built. Speculative
decoding: the draft's decoder section becomes `model.draft` of the target's
genai_config.json, the draft files sit in `draft/` under the target folder,
`max_draft_tokens` = γ.

Each system reports `rss_after_load_mb` (VmRSS once the model(s) are loaded, before any
generation) and `peak_rss_mb` (this process's VmHWM after its runs: monotone, so in a
process that ran both systems the speculative peak includes the plain run's; not ru_maxrss,
which Linux carries over exec from the parent).
Only the standard library and onnxruntime_genai are imported (`run_measured` is reused by
`tandem.bench.realsize`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# our bundle precision -> the builder's -p (all four exist in 0.18's builder; fp16 is meant for
# GPUs there: "Valid precision + execution provider combinations are: FP32 CPU, ..., INT8 CPU, INT4 CPU")
PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int4"}
QUANT_OPTIONS = {"accuracy_level": "4"}  # int8 / int4: the CPU default of the builder, stated explicitly
QUANT_DEFAULTS = {"block_size": 32, "is_symmetric": True, "algo_config": "default (RTN)",
                  "op_types_to_quantize": "MatMul"}
SYSTEMS = ("greedy", "speculative")


def proc_status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB, None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec. Not ru_maxrss: Linux
    carries the pre-exec high-water mark over exec, so a child of a big process reports at least
    the parent's RSS at fork time (a trivial child of an 800 MiB parent says 800 MiB)."""
    hwm = proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Forks and execs the command from a fresh small interpreter, then writes "exit_code maxrss_kb"
# of that child (os.wait4) to argv[1]: the child's ru_maxrss then starts from this launcher's
# few MiB instead of inheriting the (possibly large) RSS of the process that runs the benchmark.
_LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write("cannot run %s: %s\n" % (sys.argv[2], exc))
        sys.stderr.flush()
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write("%d %d" % (code, ru.ru_maxrss))
sys.exit(code if 0 <= code < 256 else 1)
"""


def run_measured(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 7200.0) -> dict[str, Any]:
    """Run `cmd` (stdout and stderr appended to `log`); its wall time and peak RSS.

    The peak is the ru_maxrss that os.wait4 gives for `cmd`'s process (its waited-for
    descendants included), measured through a small launcher interpreter (see _LAUNCHER)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    status_file = log.with_name(f".{log.name}.{os.getpid()}.rusage")
    status_file.unlink(missing_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(status_file), *cmd], stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        wall = time.monotonic() - start
    try:
        code, maxrss_kb = (int(x) for x in status_file.read_text().split())
        status_file.unlink()
    except (OSError, ValueError):
        code, maxrss_kb = proc.returncode, 0
    return {"command": cmd, "returncode": code, "wall_s": round(wall, 2),
            "peak_rss_mb": round(maxrss_kb / 1024.0, 1) if maxrss_kb else None, "timed_out": timed_out,
            "log": str(log)}


def _source_hash(folder: Path, extra: str = "") -> str:
    digest = hashlib.sha256(f"{folder.resolve()}|{extra}".encode())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def builder_command(hf_dir: Path, out: Path, precision: str, cache: Path) -> list[str]:
    """The model builder's command line for `precision` on the CPU provider."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", PRECISIONS[precision], "-e", "cpu", "-c", str(cache)]
    if precision in ("int4", "int8"):
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in QUANT_OPTIONS.items())]
    return cmd


def _og_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxruntime-genai")
    except Exception:  # noqa: BLE001
        return "?"


def build(hf_dir: Path, work: Path, precision: str, *, timeout: float = 7200.0) -> tuple[Path, dict[str, Any]]:
    """The builder's output for (hf_dir, precision) under work/builds/, built unless a build of
    the same source files, precision and options is there. Returns the folder and the build's
    record: command, wall_s, peak_rss_mb (of when it was built) and `cached`."""
    probe = builder_command(hf_dir, Path("OUT"), precision, Path("CACHE"))
    key = _source_hash(hf_dir, f"{precision}|{' '.join(probe[3:])}|{_og_version()}")
    out = work / "builds" / f"{hf_dir.name}-{precision}-{key}"
    stamp = out / ".build.json"
    if stamp.is_file() and (out / "genai_config.json").is_file():
        record = json.loads(stamp.read_text())
        return out, {**record, "cached": True}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = builder_command(hf_dir, out, precision, work / "hf_cache")
    print(f"building {hf_dir} at {precision} with the GenAI model builder ...", file=sys.stderr, flush=True)
    run = run_measured(cmd, log=work / "builder.log", env=env, cwd=work, timeout=timeout)
    if run["returncode"] != 0 or not (out / "genai_config.json").is_file():
        why = "timed out" if run["timed_out"] else f"exit {run['returncode']}"
        raise RuntimeError(f"model builder failed for {hf_dir} at {precision} ({why}); see {work / 'builder.log'}")
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    record = {**run, "precision": precision, "source": str(hf_dir), "output": str(out),
              "extra_options": dict(QUANT_OPTIONS) if precision in ("int4", "int8") else {},
              "quant_defaults": QUANT_DEFAULTS if precision in ("int4", "int8") else {},
              "output_bytes": size, "onnxruntime_genai": _og_version(),
              "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stamp.write_text(json.dumps(record, indent=1))
    print(f"built in {run['wall_s']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
    return out, {**record, "cached": False}


def _set_threads(config: dict[str, Any], threads: int, draft_threads: int | None = None) -> None:
    for section, n in ((config["model"]["decoder"], threads), (config["model"].get("draft") or {}, draft_threads)):
        if section:
            opts = section.setdefault("session_options", {})
            opts["intra_op_num_threads"] = n if n is not None else threads
            opts["inter_op_num_threads"] = 1


def speculative_folder(target: Path, draft: Path, out: Path, threads: int, draft_threads: int | None = None) -> Path:
    """A model folder whose genai_config has the draft as `model.draft` (files linked)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "draft").mkdir(parents=True)
    for src, dst in ((target, out), (draft, out / "draft")):
        for f in src.iterdir():
            if f.is_file() and f.name != "genai_config.json" and not f.name.startswith("."):
                os.symlink(f.resolve(), dst / f.name)
    config = json.loads((target / "genai_config.json").read_text())
    draft_decoder = json.loads((draft / "genai_config.json").read_text())["model"]["decoder"]
    draft_decoder["filename"] = "draft/" + draft_decoder["filename"]
    config["model"]["draft"] = draft_decoder
    _set_threads(config, threads, draft_threads if draft_threads is not None else threads)
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def _run(og: Any, folder: Path, prompts: list[list[int]], max_new_tokens: int, repeats: int,
         draft_tokens: int | None) -> dict[str, Any]:
    t_load = time.perf_counter()
    model = og.Model(str(folder))
    load_s = time.perf_counter() - t_load
    rss_loaded = proc_status_mb("VmRSS")

    def one(ids: list[int], n: int) -> tuple[list[int], float, dict[str, Any]]:
        params = og.GeneratorParams(model)
        total = len(ids) + n
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        if draft_tokens:
            params.set_speculative_options(max_draft_tokens=draft_tokens)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        dt = time.perf_counter() - t0
        seq = list(gen.get_sequence(0))[len(ids):]
        stats = dict(gen.get_speculative_stats()) if draft_tokens else {}
        return [int(t) for t in seq], dt, stats

    one(prompts[0], min(8, max_new_tokens))  # warm-up
    tps, first_ids, spec = [], [], []
    for r in range(repeats):
        tokens, seconds = 0, 0.0
        for ids in prompts:
            new, dt, stats = one(ids, max_new_tokens)
            tokens += len(new)
            seconds += dt
            if r == 0:
                first_ids.append(new)
                spec.append(stats)
        tps.append(tokens / seconds)
    out: dict[str, Any] = {"tokens_per_second": statistics.median(tps), "tokens_per_second_all": tps,
                           "first_ids": first_ids, "load_s": load_s, "rss_after_load_mb": rss_loaded,
                           "peak_rss_mb": peak_rss_mb()}
    if draft_tokens:
        out["max_draft_tokens"] = draft_tokens
        keep = ("rounds", "draft_tokens_proposed", "draft_tokens_accepted", "draft_forward_passes",
                "target_forward_passes", "mean_emitted_tokens_per_round", "acceptance_length_histogram",
                "total_draft_ms", "total_target_ms")
        out["speculative_stats"] = [{k: s[k] for k in keep if k in s} for s in spec]
        total = lambda key: sum(float(s.get(key, 0) or 0) for s in spec)  # noqa: E731
        if total("rounds"):
            out["E"] = sum(len(x) for x in first_ids) / total("rounds")
        if total("draft_tokens_proposed"):
            out["alpha"] = total("draft_tokens_accepted") / total("draft_tokens_proposed")
        if total("draft_forward_passes"):
            out["draft_ms_per_pass"] = total("total_draft_ms") / total("draft_forward_passes")
        if total("target_forward_passes"):
            out["target_ms_per_pass"] = total("total_target_ms") / total("target_forward_passes")
    return out


def main(request_path: str, result_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    result: dict[str, Any] = {"systems": {}, "errors": {}, "builds": {}}
    work = Path(req["work"])
    work.mkdir(parents=True, exist_ok=True)
    precision = req.get("precision") or "fp32"
    threads = int(req["threads"])
    draft_threads = int(req["draft_threads"]) if req.get("draft_threads") is not None else threads
    systems = [s for s in (req.get("systems") or SYSTEMS) if s in SYSTEMS]
    result["precision"] = precision
    try:
        import onnxruntime_genai as og

        result["versions"] = {"onnxruntime-genai": og.__version__}
        try:
            from importlib.metadata import version

            result["versions"]["onnxruntime"] = version("onnxruntime")
        except Exception:  # noqa: BLE001
            pass
        target, result["builds"]["large"] = build(Path(req["large"]), work, precision)
        config = json.loads((target / "genai_config.json").read_text())
        _set_threads(config, threads)
        (target / "genai_config.json").write_text(json.dumps(config, indent=2))
        draft = None
        if "speculative" in systems or req.get("build_only"):
            draft, result["builds"]["draft"] = build(Path(req["draft"]), work, precision)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        Path(result_path).write_text(json.dumps(result))
        return 0
    result["speculative_api"] = hasattr(og.GeneratorParams, "set_speculative_options")
    if req.get("build_only"):
        Path(result_path).write_text(json.dumps(result))
        return 0
    prompts, n, reps = req["prompts"], int(req["max_new_tokens"]), int(req["repeats"])
    if "greedy" in systems:
        try:
            result["systems"]["ortgenai_greedy"] = _run(og, target, prompts, n, reps, None)
        except Exception as exc:  # noqa: BLE001
            result["errors"]["ortgenai_greedy"] = f"{type(exc).__name__}: {exc}"
    if "speculative" in systems and not result["speculative_api"]:
        result["errors"]["ortgenai_speculative"] = (
            f"onnxruntime-genai {og.__version__} has no speculative decoding API; plain decoding only")
    elif "speculative" in systems and draft is not None:
        try:
            spec_dir = work / "speculative" / f"{target.name}--{draft.name}"
            spec = speculative_folder(target, draft, spec_dir, threads, draft_threads)
            result["systems"]["ortgenai_speculative"] = _run(og, spec, prompts, n, reps,
                                                             int(req["max_draft_tokens"]))
            result["systems"]["ortgenai_speculative"]["draft_threads"] = draft_threads
        except Exception as exc:  # noqa: BLE001
            result["errors"]["ortgenai_speculative"] = f"{type(exc).__name__}: {exc}"
            result.setdefault("tracebacks", {})["ortgenai_speculative"] = traceback.format_exc(limit=3)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
