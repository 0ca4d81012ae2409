"""Bundle precisions: fp32, fp16 (for CUDA), weight-only int8 / int4 (for CPU).

Every precision keeps the graph I/O of the fp32 export (ids int64; logits, K/V,
representations, memory and router score float32), because the C++ loop binds float32
buffers:

- ``fp16``: weights and compute in float16, I/O float32 (ONNX Runtime's
  ``convert_float_to_float16(keep_io_types=True)``). Meant for CUDA; the CPU provider runs
  it too (slowly).
- ``int8`` / ``int4``: the constant-weight MatMuls become ``com.microsoft.MatMulNBits``
  (ONNX Runtime's ``MatMulNBitsQuantizer``: symmetric, blocks of 32 along K, activations
  stay float32). The embedding Gather is left in fp32.

Graphs whose tensors exceed ``EXTERNAL_DATA_BYTES`` are saved with their weights in one
external data file next to them, named ``<graph>.onnx.data`` (a bare file name: the C++
loader refuses data paths outside the bundle).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import onnx

from tandem.errors import ExportError
from tandem.export.onnx_io import EXTERNAL_DATA_BYTES

PRECISIONS = ("fp32", "fp16", "int8", "int4")
NBITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else an ExportError saying what is."""
    if precision not in PRECISIONS:
        raise ExportError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} "
            "(fp16 for CUDA, int8/int4 weight-only for CPU)"
        )
    return precision


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (external ones counted by their shape)."""
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += count * itemsize
    return total


def save_model(model: onnx.ModelProto, dst: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> None:
    """Write `model` to `dst`, with external data `dst.name + ".data"` when its tensors exceed
    `external_data_bytes`; stale data files of `dst` are removed. `model` must hold its
    tensors in memory (load with external data)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data_name = dst.name + ".data"
    external = tensor_bytes(model) > external_data_bytes
    # write into a scratch folder beside dst, then move: a failed save leaves dst intact, and
    # onnx appends to an existing data file rather than replacing it
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as scratch:
        tmp = Path(scratch) / dst.name
        try:
            onnx.save_model(
                model, str(tmp), save_as_external_data=external, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )
        except (ValueError, OSError) as exc:
            raise ExportError(f"could not write {dst}: {exc}") from exc
        for old in dst.parent.glob(dst.name + "*.data"):
            old.unlink()
        if external:
            shutil.move(str(tmp.with_name(data_name)), str(dst.with_name(data_name)))
        tmp.replace(dst)


def _matmul_nbits() -> ModuleType:
    """ORT's MatMulNBits quantizer module. Importing it calls logging.basicConfig(INFO) and
    logs every node; undo the first and silence the second."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def _to_nbits(src: Path, bits: int) -> onnx.ModelProto:
    q = _matmul_nbits()
    config = q.DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True, bits=bits)
    quantizer = q.MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=bits, block_size=BLOCK_SIZE, is_symmetric=True, algo_config=config
    )
    quantizer.process()
    return quantizer.model.model


def _to_fp16(src: Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # a path (not a proto): shape inference then works on models over 2 GB
    return convert_float_to_float16(str(src), keep_io_types=True)


def quantize_graph(
    src: Path, dst: Path, precision: str, *, external_data_bytes: int = EXTERNAL_DATA_BYTES
) -> None:
    """Write the fp32 graph `src` at `precision` to `dst` (`dst` may be `src`: in place).

    Graph I/O names and types are unchanged; `src` may keep its weights in external data.
    ``fp32`` converts nothing: it re-saves the graph (inlining or externalising its data).
    `external_data_bytes`: when the tensors exceed it, they go to the external data file
    `dst.name + ".data"` (tests lower it to force that path).
    """
    check_precision(precision)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"no ONNX graph at {src}")
    try:
        if precision == "fp16":
            model = _to_fp16(src)
        elif precision in NBITS:
            model = _to_nbits(src, NBITS[precision])
        else:
            model = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - onnx / ORT tools raise many types
        raise ExportError(f"converting {src.name} to {precision} failed: {exc}") from exc
    save_model(model, dst, external_data_bytes)
