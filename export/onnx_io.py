"""Shared ONNX export plumbing: dynamo export with symbolic dims, and graph I/O naming.

Each graph wrapper is an `nn.Module` whose `forward(input_ids, *extra, *past_flat)` returns
`(logits, *present_flat, *extra_outputs)`; past/present are flattened as
`k0, v0, k1, v1, ...` in the order of the manifest's `past_keys` / `past_values`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tandem.errors import ExportError
from tandem.manifest import GraphSpec

# graphs whose tensors exceed this are saved with external data (protobuf's limit is 2 GB)
EXTERNAL_DATA_BYTES = 1_800_000_000


def flatten_past(past: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [t for kv in past for t in kv]


def unflatten_past(flat: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def empty_past(
    num_layers: int, num_kv_heads: int, head_dim: int, length: int = 0, seed: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Past K/V `[1, h_kv, length, dh]` per layer: zeros, or seeded random values."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)

    def make() -> torch.Tensor:
        shape = (1, num_kv_heads, length, head_dim)
        return torch.zeros(shape) if gen is None else torch.randn(shape, generator=gen)

    return [(make(), make()) for _ in range(num_layers)]


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic_shapes: tuple[object, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    opset: int = 20,
) -> None:
    """torch.onnx.export(dynamo=True) with explicit names; one file, no external data
    unless the model is over 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # the exporter logs one warning per torchvision op it cannot register: noise for us
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(f"torch.onnx.export failed for {path.name}: {exc}") from exc
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {path.name}")
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    external = size > EXTERNAL_DATA_BYTES
    for old in path.parent.glob(path.name + "*.data"):
        old.unlink()
    program.save(str(tmp), external_data=external)
    if external:
        # keep the data file name stable next to the final graph name
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            data.rename(path.with_name(path.name + ".data"))
            import onnx

            model = onnx.load(str(tmp), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = path.name + ".data"
            onnx.save(model, str(tmp))
    tmp.replace(path)


def export_step_graph(module: nn.Module, spec: GraphSpec, out_dir: Path) -> GraphSpec:
    """Export a graph wrapper with `forward(input_ids, *memory, *past_flat)` (any of the
    three roles) to `out_dir / spec.file`, with the dims `spec` declares dynamic:
    ids `[1, t]`, memory `[1, m, d_L]`, past `[1, h, P, dh]`."""
    t = torch.export.Dim("t", min=1, max=65536)
    m = torch.export.Dim("m", min=0, max=65536)
    P = torch.export.Dim("P", min=0, max=65536)
    ids = torch.zeros((1, 2), dtype=torch.long)
    # distinct example tensors: the exporter would alias one tensor passed twice
    memory = [torch.randn(1, 2, spec.memory_size) for _ in spec.memory]
    past = flatten_past(empty_past(spec.num_layers, spec.num_kv_heads, spec.head_dim, length=3, seed=0))
    # nesting mirrors forward(input_ids, *rest)
    dynamic = ({1: t}, (*({1: m} for _ in memory), *({2: P} for _ in past)))
    export_graph(module.eval().float(), (ids, *memory, *past), dynamic, spec.input_names(),
                 spec.output_names(), out_dir / spec.file)
    return spec
