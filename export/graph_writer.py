"""A minimal ONNX graph writer whose weights stream to one external data file.

Each initializer's bytes are appended to `<graph>.onnx.data` as soon as it is added (offsets
aligned to 4 KiB, so ONNX Runtime can map them), and only a reference stays in memory. A
graph of any size is therefore written holding one tensor at a time; the `.onnx` file keeps
the nodes and small tensors only. The data file's name is bare (no folder), as the C++ loader
requires of a bundle.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tandem.errors import ExportError

OPSET = 21  # ai.onnx
MS_DOMAIN = "com.microsoft"
ALIGN = 4096
INLINE_BYTES = 1024  # tensors up to this size stay inside the .onnx file

DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
          "int32": TensorProto.INT32}


class GraphWriter:
    """Nodes, I/O and streamed initializers of one graph. Use as a context manager: the data
    file is closed (and, on error, the partial files removed) on exit."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self.data_name = self.path.name + ".data"
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: Counter[str] = Counter()
        self._data = (self.path.parent / self.data_name).open("wb")
        self._offset = 0
        self._digest = hashlib.sha256()  # of the data file, as written (no second read)

    def __enter__(self) -> GraphWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._data.close()
        if exc_type is not None:
            self.path.unlink(missing_ok=True)
            (self.path.parent / self.data_name).unlink(missing_ok=True)

    # ---- I/O ------------------------------------------------------------------------
    def input(self, name: str, dtype: str, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))
        return name

    def output(self, value: str, name: str, dtype: str, shape: list[int | str]) -> None:
        """Declare `value` a graph output called `name` (an Identity renames when they differ)."""
        if value != name:
            self.op("Identity", [value], outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))

    # ---- weights --------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        """Add a constant tensor; large ones go to the external data file right away."""
        array = np.ascontiguousarray(array)
        if array.nbytes <= INLINE_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        return self.stream(name, array.dtype, array.shape, [array])

    def stream(self, name: str, dtype: np.dtype | type, shape: tuple[int, ...], pieces: Iterable[np.ndarray]) -> str:
        """Add a constant tensor written piece by piece: `pieces` are consecutive row-major
        slices of it (so it never needs to exist whole in memory)."""
        dtype = np.dtype(dtype)
        start = self._offset + (-self._offset % ALIGN)
        try:
            self._write(b"\0" * (start - self._offset))
            for piece in pieces:
                self._write(memoryview(np.ascontiguousarray(piece, dtype=dtype)).cast("B"))
        except OSError as exc:
            raise ExportError(f"cannot write {self.data_name}: {exc}") from exc
        length = self._offset - start
        if length != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ExportError(f"internal: {name} got {length} bytes for shape {shape}")
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(dtype)
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(start)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def _write(self, data: bytes | memoryview) -> None:
        self._data.write(data)
        self._digest.update(data)
        self._offset += len(data)

    @property
    def data_sha256(self) -> str:
        """sha256 of the data file written so far."""
        return self._digest.hexdigest()

    def const(self, name: str, values: list[int] | np.ndarray, dtype: type = np.int64) -> str:
        return self.weight(name, np.asarray(values, dtype=dtype))

    # ---- nodes ----------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], *, outputs: list[str] | int = 1, name: str = "",
           domain: str = "", **attrs: Any) -> Any:
        """Add a node; returns its output name (or list of names when `outputs` > 1). Empty
        strings in `outputs` skip optional outputs."""
        base = name or op_type
        self._counts[base] += 1
        node_name = base if self._counts[base] == 1 else f"{base}_{self._counts[base]}"
        if isinstance(outputs, int):
            outputs = [f"{node_name}/out{i}" if outputs > 1 else f"{node_name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, domain=domain or None,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    # ---- save -----------------------------------------------------------------------
    def save(self) -> None:
        """Write the `.onnx` file (the data file is complete already)."""
        self._data.flush()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="tandem")
        model.ir_version = 10
        try:
            self.path.write_bytes(model.SerializeToString())
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot write {self.path}: {exc}") from exc
