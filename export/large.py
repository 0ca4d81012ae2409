"""M_L as a block-mode graph: `input_ids [1,T]` + past → logits, present, representations."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tandem.export.arch import arch_of
from tandem.export.onnx_io import export_step_graph, flatten_past, unflatten_past
from tandem.manifest import GraphSpec


class LargeGraph(nn.Module):
    """forward(input_ids [1,T], k0, v0, ...) -> (logits [1,T,V], present k0, v0, ..., reps...)

    past K/V `[1, h_kv, P, dh]`, present `[1, h_kv, P+T, dh]`, each rep `[1, T, d_L]`.
    """

    def __init__(self, large: nn.Module, rep_layers: list[int]) -> None:
        super().__init__()
        self.large = large
        self.rep_layers = list(rep_layers)

    def forward(self, input_ids: torch.Tensor, *past_flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from tandem.train.model import large_step

        logits, present, reps = large_step(
            self.large, input_ids, unflatten_past(past_flat), self.rep_layers
        )
        return (logits, *flatten_past(present), *reps)


def large_spec(large: nn.Module, rep_layers: list[int], file: str = "large.onnx") -> GraphSpec:
    dims = arch_of(large).dims(large.config)
    return GraphSpec.for_layers(
        file,
        **dims,
        rep_layers=list(rep_layers),
        reps=[f"rep.{layer}" for layer in rep_layers],
    )


def export_large(large: nn.Module, rep_layers: list[int], out_dir: Path) -> GraphSpec:
    """Write `large.onnx` (fp32) into out_dir and return its spec."""
    return export_step_graph(LargeGraph(large, rep_layers), large_spec(large, rep_layers), out_dir)
