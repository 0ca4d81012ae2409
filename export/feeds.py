"""ONNX Runtime feeds for one call of a bundle graph (numpy only: no torch needed).

The graph contract (docs/CONTRACTS.md): ids, memory rows, past K/V buffers, and the lengths
GroupQueryAttention reads. Here every KV buffer is exactly as long as the call's total, so a
plain `session.run` works without IO binding (the C++ loop binds longer shared buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.manifest import GraphSpec


@dataclass
class CaseInputs:
    """One graph call: ids `[1, t]`, memory `[1, m, d_L]` per memory layer (tandem drafter), past
    K/V `[1, h_kv, P, dh]` per layer, and the first token row whose logits are wanted."""

    ids: np.ndarray
    memory: list[np.ndarray]
    past: list[tuple[np.ndarray, np.ndarray]]
    logits_from: int = 0


def random_inputs(spec: GraphSpec, tokens: int, past_len: int, memory_rows: int = 0, seed: int = 0,
                  logits_from: int = 0) -> CaseInputs:
    """Seeded random ids, memory rows and past K/V for one call."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.vocab_size, (1, tokens), dtype=np.int64)
    memory = [rng.standard_normal((1, memory_rows, spec.memory_size), dtype=np.float32) for _ in spec.memory]
    kv = (1, spec.num_kv_heads, past_len, spec.head_dim)
    past = [(rng.standard_normal(kv, dtype=np.float32), rng.standard_normal(kv, dtype=np.float32))
            for _ in range(spec.num_layers)]
    return CaseInputs(ids, memory, past, logits_from)


def graph_feeds(spec: GraphSpec, inputs: CaseInputs) -> dict[str, np.ndarray]:
    """Feeds for one call: KV buffers as long as the call's total (+ the graph's scratch rows)."""
    new = inputs.ids.shape[1] + (inputs.memory[0].shape[1] if inputs.memory else 0)
    past_len = inputs.past[0][0].shape[2]
    total = past_len + new
    kv_dtype = np.float16 if spec.kv_dtype == "float16" else np.float32
    feeds: dict[str, np.ndarray] = {spec.input_ids: inputs.ids}
    feeds.update(zip(spec.memory, inputs.memory, strict=True))
    for (k, v), name_k, name_v in zip(inputs.past, spec.past_keys, spec.past_values, strict=True):
        for name, tensor in ((name_k, k), (name_v, v)):
            buffer = np.zeros((1, spec.num_kv_heads, total + spec.kv_scratch_rows, spec.head_dim), dtype=kv_dtype)
            buffer[:, :, :past_len] = tensor
            feeds[name] = buffer
    feeds[spec.seqlens_k] = np.array([total - 1], dtype=np.int32)
    feeds[spec.total_sequence_length] = np.array(total, dtype=np.int32)
    feeds[spec.logits_from] = np.array([inputs.logits_from], dtype=np.int64)
    return feeds
