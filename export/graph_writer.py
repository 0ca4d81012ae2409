"""A minimal ONNX graph writer whose weights stream to one external data file.

Each initializer's bytes are appended to `<graph>.onnx.data` as soon as it is added (offsets
aligned to 4 KiB, so ONNX Runtime can map them), and only a reference stays in memory. A
graph of any size is therefore written holding one tensor at a time; the `.onnx` file keeps
the nodes and small tensors only. The data file's name is bare (no folder), as the C++ loader
requires of a bundle.

Within one bundle the graphs' writers share a `SharedData` index: a tensor of at least
`SHARE_MIN_BYTES` whose dtype, shape and bytes (sha256) equal a tensor already in another
graph's data file is not written again; its TensorProto points at that file (same folder).
A tandem drafter at M_L's width with M_L's embedding and LM head thus stores them once.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
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
SHARE_MIN_BYTES = 64 * 1024  # smaller tensors are always written, never looked up in SharedData

DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
          "int32": TensorProto.INT32}


@dataclass
class _Stored:
    """A tensor in a data file of the bundle (bytes [offset, offset + length) of `location`)."""

    location: str
    offset: int
    length: int
    digest: str | None = None  # sha256 of the bytes; computed on first need


class SharedData:
    """Content index of the tensors written to the data files of one bundle folder, so that a
    tensor is stored once however many graphs use it.

    Tensors are indexed by (dtype, shape) when written; their sha256 is computed only when a
    later tensor of the same dtype and shape asks (the new one is hashed as it streams, the
    stored one read back from its file once), so graphs that share nothing cost no hashing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._stored: defaultdict[tuple[str, tuple[int, ...]], list[_Stored]] = defaultdict(list)
        self.saved_bytes = 0  # bytes not written thanks to the index

    def candidates(self, dtype: np.dtype, shape: tuple[int, ...], exclude: str) -> list[_Stored]:
        """Stored tensors of this dtype and shape outside the data file `exclude`."""
        return [s for s in self._stored.get((dtype.str, shape), []) if s.location != exclude]

    def find(self, candidates: list[_Stored], digest: str) -> _Stored | None:
        """The first of `candidates` whose bytes hash to `digest`."""
        for stored in candidates:
            if stored.digest is None:
                stored.digest = self._hash(stored)
            if stored.digest == digest:
                return stored
        return None

    def add(self, dtype: np.dtype, shape: tuple[int, ...], stored: _Stored) -> None:
        self._stored[(dtype.str, shape)].append(stored)

    def _hash(self, stored: _Stored) -> str:
        digest = hashlib.sha256()
        try:
            with (self.folder / stored.location).open("rb") as f:
                f.seek(stored.offset)
                left = stored.length
                while left:
                    chunk = f.read(min(left, 1 << 22))
                    if not chunk:
                        raise ExportError(f"internal: {stored.location} ends before offset "
                                          f"{stored.offset + stored.length}")
                    digest.update(chunk)
                    left -= len(chunk)
        except OSError as exc:
            raise ExportError(f"cannot read {stored.location}: {exc}") from exc
        return digest.hexdigest()


class GraphWriter:
    """Nodes, I/O and streamed initializers of one graph. Use as a context manager: the data
    file is closed (and, on error, the partial files removed) on exit.

    `shared`: the bundle's `SharedData` (the same object for every graph of a bundle, all
    written into one folder), or None to store every tensor in this graph's own data file."""

    def __init__(self, path: Path, name: str, shared: SharedData | None = None) -> None:
        self.path = Path(path)
        self.name = name
        self.shared = shared
        if shared is not None and shared.folder.resolve() != self.path.parent.resolve():
            raise ExportError(f"internal: {self.path} is not in the shared data folder {shared.folder}")
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
        dtype, shape = np.dtype(dtype), tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        index = self.shared if self.shared is not None and nbytes >= SHARE_MIN_BYTES else None
        # Tensors of the same dtype and shape in another graph's file: this one is hashed as it
        # streams, and if it equals one of them the bytes just written are taken back.
        candidates = index.candidates(dtype, shape, self.data_name) if index is not None else []
        before = (self._offset, self._digest.copy())
        own = hashlib.sha256() if candidates else None
        start = self._offset + (-self._offset % ALIGN)
        try:
            self._write(b"\0" * (start - self._offset))
            for piece in pieces:
                data = memoryview(np.ascontiguousarray(piece, dtype=dtype)).cast("B")
                self._write(data)
                if own is not None:
                    own.update(data)
        except OSError as exc:
            raise ExportError(f"cannot write {self.data_name}: {exc}") from exc
        length = self._offset - start
        if length != nbytes:
            raise ExportError(f"internal: {name} got {length} bytes for shape {shape}")
        location = self.data_name
        if index is not None:
            same = index.find(candidates, own.hexdigest()) if own is not None else None
            if same is None:
                digest = own.hexdigest() if own is not None else None
                index.add(dtype, shape, _Stored(self.data_name, start, length, digest))
            else:  # stored already: point there, and forget the copy
                self._rewind(*before)
                location, start = same.location, same.offset
                index.saved_bytes += length
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(dtype)
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(start)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def alias(self, name: str, of: str, shape: tuple[int, ...]) -> str:
        """A constant `name` holding the bytes of the constant `of` seen with another shape (of
        as many elements): for a stored tensor, one more reference to the same bytes."""
        (source,) = [t for t in self.initializers if t.name == of]
        if int(np.prod(shape, dtype=np.int64)) != int(np.prod(source.dims, dtype=np.int64)):
            raise ExportError(f"internal: {name} {shape} cannot alias {of} {list(source.dims)}")
        if source.data_location != TensorProto.EXTERNAL:
            self.initializers.append(numpy_helper.from_array(numpy_helper.to_array(source).reshape(shape), name))
            return name
        tensor = TensorProto()
        tensor.CopyFrom(source)
        tensor.name = name
        del tensor.dims[:]
        tensor.dims.extend(shape)
        self.initializers.append(tensor)
        return name

    def _write(self, data: bytes | memoryview) -> None:
        self._data.write(data)
        self._digest.update(data)
        self._offset += len(data)

    def _rewind(self, offset: int, digest: Any) -> None:
        """Cut the data file back to `offset` bytes, whose sha256 state is `digest`."""
        try:
            self._data.flush()
            self._data.truncate(offset)
            self._data.seek(offset)
        except OSError as exc:
            raise ExportError(f"cannot write {self.data_name}: {exc}") from exc
        self._offset, self._digest = offset, digest

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
