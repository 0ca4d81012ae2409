"""Typed exceptions. Every message says what to fix."""

from __future__ import annotations


class TandemError(Exception):
    """Base class of every error raised by tandem."""


class BundleError(TandemError):
    """A bundle folder is missing, incomplete, corrupt or inconsistent."""


class InvalidArgumentError(TandemError, ValueError):
    """A parameter or an input (prompt, token ids, options) is out of range."""


class DeviceUnavailableError(TandemError):
    """The requested execution provider (e.g. CUDA) is not available."""


class BusyError(TandemError):
    """A generator was used from two threads at once."""


class RuntimeBackendError(TandemError):
    """ONNX Runtime or the C++ core failed (library missing, run failed)."""


class ExportError(TandemError):
    """The exporter refused a model (unsupported architecture, mismatched tokenizers...)."""


class TrainingError(TandemError):
    """Training or evaluation could not run with the given models, data or settings."""


class MissingDependencyError(TandemError, ImportError):
    """An optional feature needs packages that are not installed (the message names the extra)."""


class UntrainedBlockLengthWarning(UserWarning):
    """A tandem drafter is asked to draft further than the block length it was trained at."""


__all__ = [
    "BundleError",
    "BusyError",
    "DeviceUnavailableError",
    "ExportError",
    "InvalidArgumentError",
    "MissingDependencyError",
    "RuntimeBackendError",
    "TandemError",
    "TrainingError",
    "UntrainedBlockLengthWarning",
]
