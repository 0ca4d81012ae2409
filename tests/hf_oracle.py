"""Hugging Face oracles of the three graphs, as PyTorch modules with the graphs' I/O.

Each wraps the PyTorch side the bundle's graphs must reproduce: M_L through transformers
(`tandem.train.model.large_step`), the tandem M_S through `TandemSmall.step`, a plain drafter
through `plain_step` (+ its router). Tests feed them and the ONNX graphs the same
`tandem.export.feeds.CaseInputs` and compare every output by its manifest name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tandem.export.feeds import CaseInputs
from tandem.train.model import TandemSmall, draft_ids, large_step, plain_router_score, plain_step


def _past(inputs: CaseInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in inputs.past]


@torch.no_grad()
def hf_outputs(role: str, model: nn.Module, inputs: CaseInputs, rep_layers: list[int] | None = None,
               router: nn.Module | None = None) -> dict[str, np.ndarray]:
    """The outputs of graph `role` for one case, computed by Hugging Face / TandemSmall."""
    ids = torch.from_numpy(inputs.ids)
    out: dict[str, np.ndarray] = {}
    if role == "large":
        logits, present, reps = large_step(model, ids, _past(inputs), list(rep_layers or []))
        out.update({f"rep.{layer}": r.numpy() for layer, r in zip(rep_layers or [], reps, strict=True)})
        score = None
    elif role == "tandem_drafter":
        assert isinstance(model, TandemSmall)
        memory = [torch.from_numpy(m) for m in inputs.memory]
        logits, present, score = model.step(ids, memory, _past(inputs))
    else:
        logits, present = plain_step(model, ids, _past(inputs))
        score = None if router is None else plain_router_score(model, router, logits)
    start = inputs.logits_from
    vocab = draft_ids(model) if role != "large" else None
    if vocab is not None:  # the graph outputs the draft vocabulary's columns only
        logits = logits[..., vocab]
    out["logits"] = logits[:, start:].numpy()
    if score is not None:  # [1, t, 2]: the greedy and the sampled routers (ROUTER_KINDS order)
        out["router_score_greedy"] = score[:, start:, 0].numpy()
        out["router_score_sampled"] = score[:, start:, 1].numpy()
    for i, (k, v) in enumerate(present):
        out[f"present.{i}.key"], out[f"present.{i}.value"] = k.numpy(), v.numpy()
    return out
