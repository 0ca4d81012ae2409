"""Peers on the same pair, prompts and machine, each in its own process, exchanging JSON.

    hf        transformers plain greedy and assisted generation (`assistant_model=` the plain
              drafter), fp32 CPU, run with this interpreter (needs torch + transformers)
    ortgenai  ONNX Runtime GenAI plain greedy and speculative decoding at the bundle's
              precision, run with the interpreter of a separate venv (default
              `<repo>/.venv-peers`, or $TANDEM_PEERS_PYTHON) that has `onnxruntime-genai`;
              plain and speculative in separate processes (clean peak RSS per system)

A peer that cannot be set up or fails is recorded with the reason; nothing raises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandem.bench.machine import REPO

PEERS = ("hf", "ortgenai")
HERE = Path(__file__).resolve().parent


def peers_python(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("TANDEM_PEERS_PYTHON") or REPO / ".venv-peers" / "bin" / "python")


def run_peer(name: str, request: dict[str, Any], *, python: Path, timeout: float) -> dict[str, Any]:
    """Run one peer script in a subprocess; returns its result or {"errors": {"setup": why}}."""
    script = HERE / ("peer_hf.py" if name == "hf" else "peer_ortgenai.py")
    if not python.is_file():
        return {"systems": {}, "errors": {"setup": f"interpreter {python} not found (create it: python3 -m venv "
                                                     f".venv-peers && .venv-peers/bin/pip install onnxruntime-genai "
                                                     f"torch==2.13.0 transformers onnx onnx-ir)"}}
    with tempfile.TemporaryDirectory(prefix=f"tandem-bench-{name}-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the peer venv must not see this project's packages
        try:
            proc = subprocess.run([str(python), str(script), str(req), str(res)], capture_output=True, text=True,
                                  timeout=timeout, cwd=tmp, env=env)
        except subprocess.TimeoutExpired:
            return {"systems": {}, "errors": {"setup": f"timed out after {timeout:.0f} s"}}
        except OSError as exc:
            return {"systems": {}, "errors": {"setup": f"could not start {python}: {exc}"}}
        if not res.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            return {"systems": {}, "errors": {"setup": f"exit {proc.returncode}: " + " | ".join(tail)}}
        return json.loads(res.read_text())


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One peer result from several processes' (systems, errors and builds united; the peak
    RSS stays per system, the top-level one is the largest)."""
    out: dict[str, Any] = {"systems": {}, "errors": {}}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            elif key == "peak_rss_mb":
                out[key] = max(out.get(key) or 0.0, value or 0.0)
            else:
                out.setdefault(key, value)
    return out


def _run_ortgenai(request: dict[str, Any], *, python: Path, timeout: float) -> dict[str, Any]:
    """Plain and speculative in two processes; a setup failure of one is named after its system
    (one `setup` error when both failed alike, e.g. no peers venv)."""
    parts = []
    for system in ("greedy", "speculative"):
        part = run_peer("ortgenai", {**request, "systems": [system]}, python=python, timeout=timeout)
        errors = part.setdefault("errors", {})
        if "setup" in errors and not part.get("systems"):
            errors[f"ortgenai_{system}"] = errors.pop("setup")
        parts.append(part)
    whys = {why for part in parts for why in part["errors"].values()}
    merged = merge_results(parts)
    if len(whys) == 1 and not merged["systems"]:
        merged["errors"] = {"setup": whys.pop()}
    return merged


def run_peers(names: list[str], *, large: Path | None, draft: Path | None, prompts: list[list[int]],
              max_new_tokens: int, repeats: int, threads: int, block_length: int, work: Path,
              python: Path, timeout: float, precision: str = "fp32") -> dict[str, Any]:
    """Every requested peer's result, keyed by peer name.

    ortgenai runs at `precision` (our bundle's), plain and speculative each in its own process,
    so each system's peak RSS is its own (plain: target loaded; speculative: target + draft)."""
    out: dict[str, Any] = {}
    for name in names:
        if large is None or draft is None or not (large / "config.json").is_file() or not (draft / "config.json").is_file():
            out[name] = {"systems": {}, "errors": {"setup": (
                "no Hugging Face folders for this bundle's M_L and plain drafter (pass --hf-large and "
                "--hf-draft; the default bundle's come from `python -m tandem.runtime.default --hf-folder large|plain`)")}}
            continue
        request = {"large": str(large), "draft": str(draft), "prompts": prompts, "max_new_tokens": max_new_tokens,
                   "repeats": repeats, "threads": threads}
        if name == "hf":
            request["num_assistant_tokens"] = block_length
            out[name] = run_peer(name, request, python=Path(sys.executable), timeout=timeout)
        else:
            request.update(work=str(work), max_draft_tokens=block_length, precision=precision)
            out[name] = _run_ortgenai(request, python=python, timeout=timeout)
    return out


def peer_rows(peers: dict[str, Any], ours: list[dict[str, Any]], block_length: int,
              large_ids: list[list[int]] | None = None) -> list[dict[str, Any]]:
    """One row per peer system with its tokens/s and the ratios vs our runtime in this run."""
    ref = {r["label"]: r for r in ours if r.get("tokens_per_second")}
    large = ref.get("large greedy")
    speed = ref.get(f"speed γ={block_length} greedy")
    vanilla = ref.get(f"vanilla γ={block_length} greedy")
    plain_ids = {
        "hf": (peers.get("hf", {}).get("systems", {}).get("hf_greedy") or {}).get("first_ids"),
        "ortgenai": (peers.get("ortgenai", {}).get("systems", {}).get("ortgenai_greedy") or {}).get("first_ids"),
    }
    rows = []
    for peer, result in peers.items():
        for system, s in result.get("systems", {}).items():
            tps = s["tokens_per_second"]
            row = {"peer": peer, "system": system, "tokens_per_second": tps, "alpha": s.get("alpha"),
                   "E": s.get("E"), "peak_rss_mb": s.get("peak_rss_mb", result.get("peak_rss_mb")),
                   "rss_after_load_mb": s.get("rss_after_load_mb"), "precision": result.get("precision"),
                   "ours_large_over_this": large["tokens_per_second"] / tps if large else None,
                   "ours_speed_over_this": speed["tokens_per_second"] / tps if speed else None,
                   "ours_vanilla_over_this": vanilla["tokens_per_second"] / tps if vanilla else None}
            base = plain_ids.get(peer)
            if base and not system.endswith("greedy"):
                row["speedup_vs_own_plain"] = tps / result["systems"][f"{peer}_greedy"]["tokens_per_second"]
            if s.get("first_ids") and large_ids:
                same = sum(a == b for a, b in zip(s["first_ids"], large_ids, strict=False))
                row["ids_equal_ours_large"] = f"{same}/{len(s['first_ids'])}"
            rows.append(row)
        for system, why in result.get("errors", {}).items():
            rows.append({"peer": peer, "system": system, "error": why})
    return rows
