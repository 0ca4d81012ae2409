"""tandem.runtime: load a bundle and generate with the C++ loop (no torch needed)."""

from tandem.runtime.api import GenerationResult, Stream, TandemModel, load, max_threads
from tandem.runtime.tokenizer import Tokenizer

__all__ = ["GenerationResult", "Stream", "TandemModel", "Tokenizer", "load", "max_threads"]
