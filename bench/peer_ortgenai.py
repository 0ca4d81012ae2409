"""Peer: ONNX Runtime GenAI, plain greedy and speculative decoding with the plain drafter.

Runs in its own virtual environment (onnxruntime-genai pins its own onnxruntime):

    <peers-venv>/bin/python peer_ortgenai.py REQUEST.json RESULT.json

REQUEST: {"large": dir, "draft": dir, "work": dir, "prompts": [[ids]], "max_new_tokens": n,
          "repeats": r, "threads": t, "max_draft_tokens": γ}
The ONNX models are built once into `work` with the package's model builder
(`python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32 -e cpu`) and reused
while the source files are unchanged. Speculative decoding: the draft's decoder section
becomes `model.draft` of the target's genai_config.json, the draft files sit in `draft/`
under the target folder, `max_draft_tokens` = γ.
Only the standard library and onnxruntime_genai are imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _source_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build(hf_dir: Path, out: Path, log: Path) -> Path:
    """Run the model builder (fp32, CPU) unless `out` already holds this source's build."""
    stamp = out / ".source"
    key = _source_hash(hf_dir)
    if stamp.is_file() and stamp.read_text() == key and (out / "genai_config.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "hf_cache")]
    with open(log, "a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=out.parent, timeout=1800)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        raise RuntimeError(f"model builder failed for {hf_dir} (exit {proc.returncode}); see {log}")
    stamp.write_text(key)
    return out


def _set_threads(config: dict[str, Any], threads: int) -> None:
    for section in (config["model"]["decoder"], config["model"].get("draft") or {}):
        if section:
            opts = section.setdefault("session_options", {})
            opts["intra_op_num_threads"] = threads
            opts["inter_op_num_threads"] = 1


def speculative_folder(target: Path, draft: Path, out: Path, threads: int) -> Path:
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
    _set_threads(config, threads)
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def _run(og: Any, folder: Path, prompts: list[list[int]], max_new_tokens: int, repeats: int,
         draft_tokens: int | None) -> dict[str, Any]:
    model = og.Model(str(folder))

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
                           "first_ids": first_ids}
    if draft_tokens:
        out["max_draft_tokens"] = draft_tokens
        keep = ("rounds", "draft_tokens_proposed", "draft_tokens_accepted", "draft_forward_passes",
                "target_forward_passes", "mean_emitted_tokens_per_round", "acceptance_length_histogram",
                "total_draft_ms", "total_target_ms")
        out["speculative_stats"] = [{k: s[k] for k in keep if k in s} for s in spec]
        rounds = sum(float(s.get("rounds", 0) or 0) for s in spec)
        if rounds:
            out["E"] = sum(len(x) for x in first_ids) / rounds
        proposed = sum(float(s.get("draft_tokens_proposed", 0) or 0) for s in spec)
        accepted = sum(float(s.get("draft_tokens_accepted", 0) or 0) for s in spec)
        if proposed:
            out["alpha"] = accepted / proposed
    return out


def main(request_path: str, result_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    result: dict[str, Any] = {"systems": {}, "errors": {}}
    work = Path(req["work"])
    work.mkdir(parents=True, exist_ok=True)
    log = work / "builder.log"
    try:
        import onnxruntime_genai as og

        result["versions"] = {"onnxruntime-genai": og.__version__}
        try:
            from importlib.metadata import version

            result["versions"]["onnxruntime"] = version("onnxruntime")
        except Exception:  # noqa: BLE001
            pass
        target = build(Path(req["large"]), work / "large", log)
        config = json.loads((target / "genai_config.json").read_text())
        _set_threads(config, int(req["threads"]))
        (target / "genai_config.json").write_text(json.dumps(config, indent=2))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        Path(result_path).write_text(json.dumps(result))
        return 0
    prompts, n, reps = req["prompts"], int(req["max_new_tokens"]), int(req["repeats"])
    result["speculative_api"] = hasattr(og.GeneratorParams, "set_speculative_options")
    try:
        result["systems"]["ortgenai_greedy"] = _run(og, target, prompts, n, reps, None)
    except Exception as exc:  # noqa: BLE001
        result["errors"]["ortgenai_greedy"] = f"{type(exc).__name__}: {exc}"
    if not result["speculative_api"]:
        result["errors"]["ortgenai_speculative"] = (
            f"onnxruntime-genai {og.__version__} has no speculative decoding API; plain decoding only")
    else:
        try:
            draft = build(Path(req["draft"]), work / "draft", log)
            spec = speculative_folder(target, draft, work / "speculative", int(req["threads"]))
            result["systems"]["ortgenai_speculative"] = _run(og, spec, prompts, n, reps,
                                                             int(req["max_draft_tokens"]))
        except Exception as exc:  # noqa: BLE001
            result["errors"]["ortgenai_speculative"] = f"{type(exc).__name__}: {exc}"
            result.setdefault("tracebacks", {})["ortgenai_speculative"] = traceback.format_exc(limit=3)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
