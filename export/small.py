"""M_S step graphs: the tandem step graph (`small.onnx`) and the plain drafter (`draft.onnx`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tandem.export.arch import arch_of
from tandem.export.onnx_io import export_step_graph, flatten_past, unflatten_past
from tandem.manifest import GraphSpec


class TandemStepGraph(nn.Module):
    """forward(input_ids [1,t], mem_0 [1,m,d_L], ..., k0, v0, ...) ->
    (logits [1,t,V], present k0, v0, ... [1,h,P+m+t,dh], router_score [1,t]?)"""

    def __init__(self, tandem: nn.Module) -> None:
        super().__init__()
        self.tandem = tandem
        self.num_memory = len(tandem.config.large_layers)

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, past_flat = list(rest[: self.num_memory]), rest[self.num_memory :]
        logits, present, score = self.tandem.step(input_ids, memory, unflatten_past(past_flat))
        return (logits, *flatten_past(present), *(() if score is None else (score,)))


class PlainStepGraph(nn.Module):
    """forward(input_ids [1,t], k0, v0, ...) -> (logits, present..., router_score [1,t]?)"""

    def __init__(self, model: nn.Module, router: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.router = router

    def forward(self, input_ids: torch.Tensor, *past_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from tandem.train.model import plain_step

        logits, present = plain_step(self.model, input_ids, unflatten_past(past_flat))
        if self.router is None:
            return (logits, *flatten_past(present))
        score = self.router(logits, self.model.get_input_embeddings().weight)
        return (logits, *flatten_past(present), score)


def tandem_spec(tandem: nn.Module, file: str = "small.onnx") -> GraphSpec:
    layers = list(tandem.config.large_layers)
    return GraphSpec.for_layers(
        file,
        **arch_of(tandem.small).dims(tandem.small.config),
        memory_layers=layers,
        memory=[f"memory.{layer}" for layer in layers],
        memory_size=tandem.config.large_hidden_size,
        router_score="router_score" if tandem.router is not None else "",
    )


def plain_spec(model: nn.Module, has_router: bool, file: str = "draft.onnx") -> GraphSpec:
    return GraphSpec.for_layers(
        file,
        **arch_of(model).dims(model.config),
        router_score="router_score" if has_router else "",
    )


def export_tandem(tandem: nn.Module, out_dir: Path) -> GraphSpec:
    """Write `small.onnx` (fp32) for a `tandem.train.model.TandemSmall`."""
    return export_step_graph(TandemStepGraph(tandem), tandem_spec(tandem), out_dir)


def export_plain(model: nn.Module, router: nn.Module | None, out_dir: Path) -> GraphSpec:
    """Write `draft.onnx` (fp32) for an ordinary HF causal LM (the vanilla drafter)."""
    return export_step_graph(PlainStepGraph(model, router), plain_spec(model, router is not None), out_dir)
