"""Export parity: run a graph in ONNX Runtime and its PyTorch wrapper on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tandem.export.onnx_io import empty_past, flatten_past
from tandem.manifest import GraphSpec


@dataclass
class Case:
    """One call: `t` new ids, `m` memory rows (small graph only), past length `P`."""

    t: int
    P: int
    m: int = 0

    @property
    def name(self) -> str:
        return f"t={self.t},P={self.P}" + (f",m={self.m}" if self.m else "")


# prefill, cached chunks of 1 and several tokens; memory chunks of 0, 1 and several rows
LARGE_CASES = [Case(6, 0), Case(1, 6), Case(4, 7)]
SMALL_CASES = [Case(1, 0, 5), Case(1, 5, 0), Case(1, 6, 1), Case(3, 7, 4)]
# validation cases per graph role
CASES = {"large": LARGE_CASES, "small": SMALL_CASES, "draft": LARGE_CASES}


def case_inputs(spec: GraphSpec, case: Case, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (1, case.t), generator=gen)
    memory = [torch.randn(1, case.m, spec.memory_size, generator=gen) for _ in spec.memory]
    past = empty_past(spec.num_layers, spec.num_kv_heads, spec.head_dim, length=case.P, seed=seed + 1)
    return [ids, *memory, *flatten_past(past)]


def max_abs_diffs(
    module: nn.Module, onnx_path: Path, spec: GraphSpec, cases: list[Case]
) -> dict[str, float]:
    """Max |ORT - PyTorch| over all outputs, per case; also the argmax agreement of logits
    (key `argmax_agreement`), which is what quantized graphs are judged by."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    agree, total = 0, 0
    for i, case in enumerate(cases):
        inputs = case_inputs(spec, case, seed=i)
        with torch.no_grad():
            expected = [t.numpy() for t in module(*inputs)]
        feeds = {name: t.numpy() for name, t in zip(spec.input_names(), inputs, strict=True)}
        got = session.run(spec.output_names(), feeds)
        diffs[case.name] = max(
            float(np.max(np.abs(g - e))) if e.size else 0.0 for g, e in zip(got, expected, strict=True)
        )
        agree += int((got[0].argmax(-1) == expected[0].argmax(-1)).sum())
        total += got[0].shape[1]
    diffs["argmax_agreement"] = agree / max(total, 1)
    return diffs
