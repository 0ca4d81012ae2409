"""Typed errors of `tandem bench`. Every message says what to fix."""

from __future__ import annotations

from tandem.errors import InvalidArgumentError, TandemError


class BenchError(TandemError):
    """A benchmark could not run (bad prompt set, output folder, missing bundle...)."""


class BenchArgumentError(BenchError, InvalidArgumentError):
    """A benchmark option is out of range or malformed."""


class PeerError(BenchError):
    """A peer system (transformers, ONNX Runtime GenAI) could not be set up or run.

    The benchmark records it in the results instead of failing."""
