"""The machine a benchmark runs on: idle check, peak memory, CPU model and versions."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def loadavg() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where /proc/loadavg is unavailable)."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return float(fields[0]), float(fields[1]), float(fields[2])
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0.0


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over the next `seconds` (from /proc/stat), None if unknown."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def wait_for_idle(max_load: float, timeout: float, log: Any = None) -> dict[str, Any]:
    """Wait until the 1-minute load average is at most `max_load`, for at most `timeout` s.

    Returns what was seen; `idle` is False (and `warning` set) when the wait timed out, in
    which case the benchmark proceeds and the warning goes into the results."""
    start = time.monotonic()
    first = loadavg()
    load = first
    while load[0] > max_load and time.monotonic() - start < timeout:
        if log:
            log(f"waiting for an idle CPU: load {load[0]:.2f} > {max_load:.2f} "
                f"({time.monotonic() - start:.0f}/{timeout:.0f} s)")
        time.sleep(min(5.0, max(0.0, timeout - (time.monotonic() - start))))
        load = loadavg()
    out: dict[str, Any] = {
        "max_load": max_load, "timeout_s": timeout, "waited_s": round(time.monotonic() - start, 1),
        "load_before": first, "load_at_start": load, "busy_fraction_at_start": busy_fraction(0.5),
        "idle": load[0] <= max_load,
    }
    if not out["idle"]:
        out["warning"] = (f"the CPU was not idle: 1-min load {load[0]:.2f} > {max_load:.2f} after "
                          f"waiting {out['waited_s']:.0f} s; timings may be noisy")
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB: VmHWM of /proc/self/status, which
    starts afresh at exec (ru_maxrss, the fallback, does not on Linux: a child of a big process
    reports at least the parent's RSS at fork time)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(threads: int) -> dict[str, Any]:
    """CPU model, cores, threads used, OS and the versions that matter."""
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(dist) for name, dist in (
            ("tandem", "tandem-runtime"), ("onnxruntime", "onnxruntime"), ("numpy", "numpy"),
            ("tokenizers", "tokenizers"), ("matplotlib", "matplotlib"))},
        "git_commit": git_commit(),
    }
