"""Peer: Hugging Face transformers, plain greedy vs assisted generation (fp32, CPU).

Runs in its own process (so that torch never enters the runtime's process and each peak
memory is its own):

    python peer_hf.py REQUEST.json RESULT.json

REQUEST: {"large": dir, "draft": dir, "prompts": [[ids]], "max_new_tokens": n,
          "repeats": r, "threads": t, "num_assistant_tokens": γ}
RESULT:  {"systems": {"hf_greedy": {...}, "hf_assisted": {...}}, "versions": {...}, ...}
Only the standard library, torch and transformers are imported.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
import traceback
from typing import Any


def _peak_rss_mb() -> float:
    """VmHWM (starts afresh at exec); ru_maxrss, which Linux carries over exec from the parent
    process, only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run(model: Any, prompts: list[list[int]], max_new_tokens: int, repeats: int, **kwargs: Any) -> dict[str, Any]:
    import torch

    def one(ids: list[int], n: int) -> tuple[list[int], float]:
        x = torch.tensor([ids], dtype=torch.long)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, **kwargs)
        return out[0, len(ids):].tolist(), time.perf_counter() - t0

    one(prompts[0], min(8, max_new_tokens))  # warm-up
    tps, first_ids = [], []
    for r in range(repeats):
        tokens, seconds = 0, 0.0
        for ids in prompts:
            new, dt = one(ids, max_new_tokens)
            tokens += len(new)
            seconds += dt
            if r == 0:
                first_ids.append(new)
        tps.append(tokens / seconds)
    return {"tokens_per_second": statistics.median(tps), "tokens_per_second_all": tps, "first_ids": first_ids}


def main(request_path: str, result_path: str) -> int:
    req = json.loads(open(request_path).read())
    result: dict[str, Any] = {"systems": {}, "errors": {}}
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(int(req["threads"]) or torch.get_num_threads())
        result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        result["threads"] = torch.get_num_threads()
        models = {}
        for role in ("large", "draft"):
            m = AutoModelForCausalLM.from_pretrained(req[role], dtype=torch.float32).eval()
            m.generation_config.eos_token_id = None  # generate exactly max_new_tokens, like ours
            m.generation_config.pad_token_id = 0
            models[role] = m
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        open(result_path, "w").write(json.dumps(result))
        return 0
    prompts, n, reps = req["prompts"], int(req["max_new_tokens"]), int(req["repeats"])
    gamma = int(req["num_assistant_tokens"])
    for name, kwargs in (
        ("hf_greedy", {}),
        ("hf_assisted", {"assistant_model": models["draft"], "num_assistant_tokens": gamma,
                         "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}),
    ):
        try:
            result["systems"][name] = _run(models["large"], prompts, n, reps, **kwargs)
            if name == "hf_assisted":
                result["systems"][name]["num_assistant_tokens"] = gamma
        except Exception as exc:  # noqa: BLE001
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            result.setdefault("tracebacks", {})[name] = traceback.format_exc(limit=3)
    result["peak_rss_mb"] = _peak_rss_mb()
    open(result_path, "w").write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
