"""Bundle precisions and the weight encodings behind them.

- ``fp32``: weights and compute in float32.
- ``fp16``: weights, activations and the KV cache in float16 (meant for CUDA; the CPU
  provider runs it too, slowly). Graph I/O other than the KV cache stays float32.
- ``int8`` / ``int4``: the linear layers become ``com.microsoft.MatMulNBits``: symmetric
  round-to-nearest, blocks of 32 along K by default (16, 64 or 128 on request), one float32
  scale per block (ONNX Runtime's own block quantizer). ``accuracy_level`` 4 (the default)
  lets the CPU provider compute with int8 activations; 0 computes in float32. The embedding
  table stays float32.

The quantization is deterministic, so the validation reference can rebuild the exact
weights a graph holds (`dequantize_blocks`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem.errors import ExportError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
NBITS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = 32
BLOCK_SIZES = (16, 32, 64, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_ACCURACY_LEVEL = 4


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else an ExportError saying what is."""
    if precision not in PRECISIONS:
        raise ExportError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} "
            "(fp16 for CUDA, int8/int4 weight-only for CPU)"
        )
    return precision


def check_block_size(block_size: int, precision: str | None = None) -> int:
    """`block_size` if MatMulNBits and GatherBlockQuantized take it, else an ExportError; also
    one when a block size other than the default is asked of `precision` fp32/fp16/bf16, whose
    weights have no blocks."""
    if block_size not in BLOCK_SIZES:
        raise ExportError(f"block_size must be one of {BLOCK_SIZES} (weights per quantization block along K; "
                          f"{DEFAULT_BLOCK_SIZE} is the default), got {block_size}")
    if precision is not None and precision not in NBITS and block_size != DEFAULT_BLOCK_SIZE:
        raise ExportError(f"block_size {block_size} applies to int8/int4 (block-quantized) weights, not {precision}")
    return block_size


def check_accuracy_level(level: int) -> int:
    if level not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level must be one of {ACCURACY_LEVELS} (4: int8 compute on CPU, "
                          f"0: float32 compute), got {level}")
    return level


def activation_dtype(precision: str) -> str:
    """Element type of a graph's activations and KV cache at `precision`."""
    return "float16" if precision == "fp16" else "float32"


def optional_torch() -> Any:
    """The torch module, or None where it is not installed: the graph builder then copies and
    transposes with numpy (the same bytes, one thread), so the runtime install can build
    graphs without torch."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def quantize_blocks(weight: np.ndarray, bits: int,
                    block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block quantization of a linear weight in Hugging Face's `[N, K]` layout
    (y = x @ weight.T) for MatMulNBits, `block_size` (B) weights per block along K.

    Returns `packed [N, K/B, B*bits/8]` uint8 and `scales [N, K/B]` float32 (K padded up to
    a multiple of B with zeros). Rows are independent: quantizing row blocks of a weight
    gives the row blocks of its quantization.
    """
    check_block_size(block_size)
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    n, k = weight.shape
    blocks = -(-k // block_size)
    torch = optional_torch()
    if torch is not None:
        weight_kn = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).T  # ORT reads [K, N]
        if blocks * block_size != k:
            weight_kn = torch.nn.functional.pad(weight_kn, (0, 0, 0, blocks * block_size - k))
        weight_kn = weight_kn.contiguous().numpy()  # torch's transposing copy is parallel and blocked
    else:  # the same bytes without torch
        weight_kn = np.zeros((blocks * block_size, n), dtype=np.float32)
        weight_kn[:k] = np.asarray(weight, dtype=np.float32).T
    packed = np.zeros((n, blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)  # unused when symmetric
    quantize = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    quantize(packed, weight_kn, scales, zero_points, block_size, n, k, True)
    return packed, scales


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, k: int, bits: int) -> np.ndarray:
    """The `[N, K]` float32 weight that `quantize_blocks`' output stands for (int4: low
    nibble first, zero point 8; int8: zero point 128); the block size is the packed shape's."""
    import torch

    n, blocks, row_bytes = packed.shape
    block_size = row_bytes * 8 // bits
    stored = torch.from_numpy(packed)
    if bits == 4:
        values = torch.stack([stored & 0x0F, stored >> 4], dim=-1).reshape(n, blocks, block_size)
        values = values.to(torch.float32).sub_(8.0)
    else:
        values = stored.to(torch.float32).sub_(128.0)
    values.mul_(torch.from_numpy(scales).unsqueeze(-1))
    values = values.reshape(n, blocks * block_size)
    return values.numpy() if blocks * block_size == k else values[:, :k].contiguous().numpy()


def stored_weight(weight: np.ndarray, precision: str, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """The `[N, K]` float32 weight a graph at `precision` computes with, for a linear weight
    `[N, K]` (the validation reference uses it to check the graph's arithmetic apart from the
    precision's loss)."""
    if precision in NBITS:
        packed, scales = quantize_blocks(weight, NBITS[precision], block_size)
        return dequantize_blocks(packed, scales, weight.shape[1], NBITS[precision])
    if precision == "fp16":
        return weight.astype(np.float16).astype(np.float32)
    return weight
