"""The sweep over our runtime: modes × block lengths × greedy/sampled, on one loaded bundle.

Every configuration generates `max_new_tokens` tokens (EOS ignored) from each prompt, once
per repeat; repeats are interleaved over configurations so that a slow spell of the shared
machine hits them all alike. Per configuration we report:

    tokens/s      median over repeats of (Σ new tokens / Σ C++ total_time) over the prompts
    speedup       tokens/s ÷ tokens/s of `large` with the same decoding, in this run
    α             accepted / drafted
    E             tokens per round, measured: Σ (new_tokens - 1) / Σ rounds (prefill emits one)
    E_α           (1 - α^(γ+1)) / (1 - α), the i.i.d. model of docs/METHOD.md §4
    bound         E / (s·c + v(w)), with s = M_S calls per round (γ for a fixed block),
                  w = M_L tokens per round (γ+1 for speed/vanilla, γ for tandem), c and v from
                  the dedicated timing runs of `costs.py`
    achieved      speedup / bound
    loop share    loop_time / total_time
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tandem.bench.costs import v_at
from tandem.bench.machine import peak_rss_mb

MODES = ("large", "tandem", "speed", "vanilla", "adaptive")


@dataclass(frozen=True)
class Config:
    """One point of the sweep. mode is the runtime mode; block is γ, "auto" or None."""

    mode: str
    block: int | str | None
    sample: bool

    @property
    def family(self) -> str:
        """The row label's mode: adaptive runs are speed/vanilla with block "auto"."""
        return f"adaptive-{self.mode}" if self.block == "auto" else self.mode

    @property
    def decoding(self) -> str:
        return "sampled" if self.sample else "greedy"

    @property
    def label(self) -> str:
        gamma = "" if self.block is None else f" γ={self.block}"
        return f"{self.family}{gamma} {self.decoding}"

    @property
    def drafter(self) -> str | None:
        """The bundle graph that drafts: small (tandem M_S) or draft (plain M_S)."""
        return {"large": None, "vanilla": "plain_drafter"}.get(self.mode, "tandem_drafter")


def make_configs(modes: list[str], blocks: list[int], decodings: list[str],
                 available: list[str]) -> tuple[list[Config], list[str]]:
    """The configurations to run and notes about the ones this bundle cannot run."""
    configs: list[Config] = []
    notes: list[str] = []
    for decoding in decodings:
        sample = decoding == "sampled"
        configs.append(Config("large", None, sample))  # the baseline, always
        for mode in modes:
            if mode == "large":
                continue
            if mode == "adaptive":
                for base in ("speed", "vanilla"):
                    if base in available:
                        configs.append(Config(base, "auto", sample))
                continue
            if mode not in available:
                note = f"mode {mode} skipped: the bundle has no {'plain drafter' if mode == 'vanilla' else 'tandem M_S'}"
                if note not in notes:
                    notes.append(note)
                continue
            configs.extend(Config(mode, b, sample) for b in blocks)
    return configs, notes


@dataclass
class Runs:
    """Everything measured for one configuration."""

    config: Config
    tokens_per_second: list[float] = field(default_factory=list)  # one per repeat
    stats: list[dict[str, Any]] = field(default_factory=list)     # one per generation
    first_ids: list[list[int]] = field(default_factory=list)      # repeat 0, per prompt
    peak_rss_mb: float = 0.0
    error: str | None = None


def run_sweep(model: Any, configs: list[Config], prompts: list[list[int]], *, max_new_tokens: int,
              repeats: int, temperature: float, seed: int,
              progress: Callable[[str], None] | None = None) -> dict[Config, Runs]:
    """Run every configuration `repeats` times over all prompts (repeats interleaved)."""
    runs = {c: Runs(c) for c in configs}
    # warm-up: one short untimed generation per configuration (sessions, allocator, caches)
    for c in configs:
        try:
            _generate(model, c, prompts[0], min(8, max_new_tokens), temperature, seed)
        except Exception as exc:  # noqa: BLE001 - recorded per configuration, the sweep goes on
            runs[c].error = f"{type(exc).__name__}: {exc}"
    for r in range(repeats):
        for c in configs:
            run = runs[c]
            if progress:
                progress(f"repeat {r + 1}/{repeats} {c.label}")
            if run.error:
                continue
            tokens = 0
            seconds = 0.0
            try:
                for i, ids in enumerate(prompts):
                    res = _generate(model, c, ids, max_new_tokens, temperature, seed + 1000 * r + i)
                    tokens += res.stats["new_tokens"]
                    seconds += res.stats["total_time"]
                    run.stats.append(dict(res.stats))
                    if r == 0:
                        run.first_ids.append(list(res.ids))
            except Exception as exc:  # noqa: BLE001
                run.error = f"{type(exc).__name__}: {exc}"
                continue
            run.tokens_per_second.append(tokens / seconds if seconds > 0 else 0.0)
            run.peak_rss_mb = peak_rss_mb()
    return runs


def _generate(model: Any, c: Config, ids: list[int], max_new_tokens: int, temperature: float, seed: int) -> Any:
    return model.generate(ids, mode=c.mode, block_length=c.block, max_new_tokens=max_new_tokens,
                          do_sample=c.sample, temperature=temperature, seed=seed, ignore_eos=True)


def _histogram(stats: list[dict[str, Any]]) -> list[int]:
    out: list[int] = []
    for s in stats:
        h = s.get("accepted_histogram") or []
        if len(h) > len(out):
            out += [0] * (len(h) - len(out))
        for i, n in enumerate(h):
            out[i] += int(n)
    return out


def summarize(runs: dict[Config, Runs], costs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration with the measured speed and the performance model."""
    base: dict[bool, float] = {}
    base_ids: dict[bool, list[list[int]]] = {}
    for c, run in runs.items():
        if c.mode == "large" and run.tokens_per_second:
            base[c.sample] = statistics.median(run.tokens_per_second)
            base_ids[c.sample] = run.first_ids
    rows = []
    for c, run in runs.items():
        row: dict[str, Any] = {
            "label": c.label, "mode": c.mode, "family": c.family, "block_length": c.block,
            "decoding": c.decoding, "error": run.error,
        }
        rows.append(row)
        if not run.tokens_per_second:
            continue
        s = run.stats
        tps = statistics.median(run.tokens_per_second)
        total = lambda key, s=s: sum(float(x[key]) for x in s)  # noqa: E731
        rounds = total("rounds")
        drafted, accepted = total("drafted"), total("accepted")
        alpha = accepted / drafted if drafted else None
        E = (total("new_tokens") - len(s)) / rounds if rounds else None
        steps = total("drafter_calls") / rounds if rounds else 0.0  # M_S calls per round
        drafted_per_round = drafted / rounds if rounds else 0.0
        row.update({
            "tokens_per_second": tps,
            "tokens_per_second_all": run.tokens_per_second,
            "speedup": tps / base[c.sample] if base.get(c.sample) else None,
            "alpha": alpha,
            "E": E,
            "drafted_per_round": drafted_per_round,
            "drafter_calls_per_round": steps,
            "new_tokens": int(total("new_tokens")),
            "generations": len(s),
            "loop_share": total("loop_time") / total("total_time") if total("total_time") else None,
            "ort_share": total("ort_time") / total("total_time") if total("total_time") else None,
            "time_to_first_token_ms": statistics.median(float(x["time_to_first_token"]) for x in s) * 1e3,
            "large_ms_per_call": total("large_time") / total("large_calls") * 1e3 if total("large_calls") else None,
            "drafter_ms_per_call": total("drafter_time") / total("drafter_calls") * 1e3 if total("drafter_calls") else None,
            "accepted_histogram": _histogram(s),
            "peak_rss_mb": run.peak_rss_mb,
        })
        if c.mode != "large" and not c.sample and base_ids.get(False):
            same = sum(a == b for a, b in zip(run.first_ids, base_ids[False], strict=False))
            row["greedy_equals_large"] = f"{same}/{len(run.first_ids)}"
        _model_bound(row, c, costs)
    return rows


def _model_bound(row: dict[str, Any], c: Config, costs: dict[str, Any]) -> None:
    """E_α, c, v, the bound E / (s·c + v(w)) and achieved/bound (docs/METHOD.md §4)."""
    if c.mode == "large":
        row.update({"c": 0.0, "v": 1.0, "bound": 1.0, "E_alpha": 1.0})
        row["achieved_over_bound"] = row["speedup"]
        return
    cost = costs.get("c", {}).get(c.drafter or "")
    if isinstance(c.block, int):
        gamma = c.block
        drafts = gamma if c.mode != "tandem" else gamma - 1
        width = gamma + 1 if c.mode != "tandem" else gamma
    else:  # adaptive: the measured mean block
        drafts = row["drafted_per_round"]
        width = drafts + 1
    alpha = row["alpha"]
    if alpha is not None and c.mode != "tandem":
        n = round(drafts) + 1
        row["E_alpha"] = float(n) if alpha >= 1.0 else (1 - alpha ** n) / (1 - alpha)
    v = v_at(costs, width)
    row["c"], row["v"], row["verify_width"] = cost, v, width
    if cost is None or v is None or not row["E"]:
        return
    row["bound"] = row["E"] / (row["drafter_calls_per_round"] * cost + v)
    if row.get("speedup"):
        row["achieved_over_bound"] = row["speedup"] / row["bound"]
