"""Held-out evaluation of drafters against M_L.

For each model, over non-overlapping held-out windows: next-token accuracy, mean total
variation distance to M_L's next-token distribution, and agreement (argmax equals M_L's
argmax). Tandem models run the training-mode block mask with block length γ (offset 0),
i.e. each block's queries see M_L's representations of every earlier block. Accuracy is also
split by position inside the block (0 = the block's first token, which sees M_L's
representations of every earlier token; γ-1 = the last, furthest from them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from tandem.train.model import (
    TANDEM_CONFIG_FILE,
    TandemSmall,
    block_starts,
    drafter_logits,
    empty_past,
    large_step,
    load_plain_drafter,
)
from tandem.train.router import total_variation

LARGE_NAME = "M_L"


def load_drafter(folder: str | Path) -> TandemSmall | PreTrainedModel:
    """A tandem M_S when ``folder`` has ``tandem_config.json``, else a plain HF causal LM (with its
    draft vocabulary when the folder has ``draft_vocab.json``); without routers: the evaluation
    does not use them, so a folder with an older router loads too."""
    folder = Path(folder)
    if (folder / TANDEM_CONFIG_FILE).exists():
        return TandemSmall.from_pretrained(folder, drop_router=True)
    return load_plain_drafter(folder)


@torch.no_grad()
def evaluate(large: PreTrainedModel, drafters: dict[str, TandemSmall | PreTrainedModel], windows: torch.Tensor,
             block_length: int, batch_size: int = 8, device: torch.device | str = "cpu",
             progress: bool = False) -> list[dict]:
    """Metrics per model (M_L first) on ``windows (W, N+1)``: inputs ``[:, :-1]``, targets ``[:, 1:]``.

    ``accuracy_by_block_position[p]`` is the accuracy over positions ``i`` with ``i - s(i) = p``.
    """
    large = large.to(device).eval()
    layers = sorted({layer for m in drafters.values() if isinstance(m, TandemSmall) for layer in m.config.large_layers})
    totals = {name: {"correct": 0.0, "tv": 0.0, "agree": 0.0} for name in [LARGE_NAME, *drafters]}
    by_position = {name: torch.zeros(block_length) for name in [LARGE_NAME, *drafters]}
    position_count = torch.zeros(block_length)
    count = 0
    batches = windows.split(batch_size)
    for batch in tqdm(batches, desc=f"eval γ={block_length}", disable=not progress):
        inputs, targets = batch[:, :-1].to(device), batch[:, 1:].to(device)
        large_logits, _, reps = large_step(large, inputs, empty_past(large.config, inputs.shape[0], device=device),
                                           layers)
        large_top = large_logits.argmax(-1)  # (B, N)
        totals[LARGE_NAME]["correct"] += (large_top == targets).sum().item()
        totals[LARGE_NAME]["agree"] += targets.numel()
        starts = block_starts(*inputs.shape, block_length).to(device)
        offset = (torch.arange(inputs.shape[1], device=device) - starts).flatten().cpu()  # i - s(i)
        position_count += torch.bincount(offset, minlength=block_length).float()
        by_position[LARGE_NAME] += torch.bincount(offset, (large_top == targets).flatten().cpu().float(),
                                                  minlength=block_length)
        for name, model in drafters.items():
            model.to(device).eval()
            own = [reps[layers.index(layer)] for layer in model.config.large_layers] if isinstance(
                model, TandemSmall) else []
            logits = drafter_logits(model, inputs, own, starts)  # (B, N, V)
            correct = logits.argmax(-1) == targets
            totals[name]["correct"] += correct.sum().item()
            by_position[name] += torch.bincount(offset, correct.flatten().cpu().float(), minlength=block_length)
            totals[name]["tv"] += total_variation(logits, large_logits).sum().item()
            totals[name]["agree"] += (logits.argmax(-1) == large_top).sum().item()
        count += targets.numel()
    return [
        {"model": name, "accuracy": t["correct"] / count, "tv_to_large": t["tv"] / count,
         "agreement_with_large": t["agree"] / count, "tokens": count, "block_length": block_length,
         "accuracy_by_block_position": (by_position[name] / position_count.clamp(min=1)).tolist()}
        for name, t in totals.items()
    ]


def format_table(results: list[dict]) -> str:
    """A fixed-width table of :func:`evaluate`'s results."""
    width = max([20, *(len(r["model"]) for r in results)])
    lines = [f"{'model':<{width}} {'accuracy':>9} {'TV to M_L':>10} {'agree M_L':>10} {'tokens':>8}  "
             "accuracy by block position"]
    lines += [f"{r['model']:<{width}} {r['accuracy']:>9.4f} {r['tv_to_large']:>10.4f} "
              f"{r['agreement_with_large']:>10.4f} {r['tokens']:>8d}  "
              + " / ".join(f"{x:.3f}" for x in r.get("accuracy_by_block_position", [])) for r in results]
    return "\n".join(lines)


def write_results(results: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2))
