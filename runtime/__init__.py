"""tandem.runtime: load a bundle and generate with the C++ loop (no torch needed)."""

from typing import Any

from tandem.runtime.api import (
    GenerationResult,
    Stream,
    TandemModel,
    check_threads,
    load,
    max_threads,
)
from tandem.runtime.tokenizer import Tokenizer

__all__ = ["GenerateOptions", "GenerationResult", "Stream", "TandemModel", "Tokenizer", "check_threads", "load",
           "max_threads"]


def __getattr__(name: str) -> Any:
    if name == "GenerateOptions":  # the C++ options struct; the compiled core loads on first use
        from tandem._core import GenerateOptions

        return GenerateOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
