"""Locate the ONNX Runtime shared library shipped in the `onnxruntime` wheel.

Finds it without importing onnxruntime (importing it would load a second ORT copy).
Standalone on purpose: CMake runs this file as a script at configure time.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys


def find_ort_library() -> str | None:
    """Path of libonnxruntime.so from $TANDEM_ORT_LIBRARY or the installed wheel, or None."""
    env = os.environ.get("TANDEM_ORT_LIBRARY")
    if env:
        return env
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    capi = pathlib.Path(next(iter(spec.submodule_search_locations))) / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*"), key=lambda p: len(p.name), reverse=True)
    return str(libs[0]) if libs else None


if __name__ == "__main__":
    path = find_ort_library()
    if path is None:
        sys.exit("onnxruntime is not installed (pip install onnxruntime)")
    print(path)
