"""tandem.runtime: load a bundle and generate with the C++ loop (no torch needed)."""

from tandem.runtime.api import GenerationResult, Stream, TandemModel, load, max_threads

__all__ = ["GenerationResult", "Stream", "TandemModel", "load", "max_threads"]
