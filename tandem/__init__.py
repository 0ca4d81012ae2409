"""tandem: Tandem Transformers (Nair et al., 2024) as a compiled ONNX Runtime loop.

Importing this package never imports torch: the runtime needs only numpy, onnxruntime and
jinja2 (chat templates); tokenizing is done by the C++ core (``tandem.Tokenizer``). The PyTorch side lives in ``tandem.train`` and ``tandem.export``.
"""

from __future__ import annotations

from tandem.errors import (
    BundleError,
    BusyError,
    DeviceUnavailableError,
    ExportError,
    InvalidArgumentError,
    RuntimeBackendError,
    TandemError,
    TrainingError,
    UntrainedBlockLengthWarning,
)

__version__ = "0.1.0"

from tandem.runtime import GenerationResult, TandemModel, Tokenizer, load  # noqa: E402

__all__ = [
    "BundleError",
    "BusyError",
    "DeviceUnavailableError",
    "ExportError",
    "InvalidArgumentError",
    "RuntimeBackendError",
    "TandemError",
    "GenerationResult",
    "TandemModel",
    "Tokenizer",
    "TrainingError",
    "UntrainedBlockLengthWarning",
    "__version__",
    "load",
]
