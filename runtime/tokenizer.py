"""`tandem.Tokenizer`: a Hugging Face ``tokenizer.json`` run by tandem's C++ core.

The same code encodes and decodes for Python and for C++ apps (``tandem/text.hpp``), and gives
the token ids and text that Hugging Face ``tokenizers`` gives for the same file
(``tokenizer.encode(text).ids`` and ``tokenizer.decode(ids, skip_special_tokens=True)``). The
runtime needs no ``tokenizers`` package. Supported: BPE tokenizers of the byte-level (GPT-2,
Llama 3, Qwen2) and SentencePiece/metaspace (Llama 2, Mistral) families; a file with another
model or component raises BundleError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.errors import BundleError, InvalidArgumentError


def _core() -> Any:
    from tandem import _core

    return _core


class Tokenizer:
    """A tokenizer.json loaded by the C++ core. Thread-safe: share one across threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """path: a ``tokenizer.json`` file, or a folder holding one (a bundle, or a Hugging Face
        model folder). Raises BundleError when it is missing, malformed or unsupported."""
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise BundleError(f"no tokenizer file at {file}: pass a tokenizer.json or a folder holding one")
        self.path = file
        self._tok = _core().Tokenizer(str(file))

    @classmethod
    def from_str(cls, json: str, source: str = "tokenizer.json") -> Tokenizer:
        """A tokenizer from the text of a tokenizer.json (`source` names it in messages)."""
        self = cls.__new__(cls)
        self.path = None
        self._tok = _core().Tokenizer.from_json(json, source)
        return self

    def encode(self, text: str | bytes, add_special_tokens: bool = True) -> list[int]:
        """The token ids of `text` (str, or UTF-8 bytes); add_special_tokens adds what the
        tokenizer's post-processor adds (e.g. a BOS token), as Hugging Face's default does.
        Invalid UTF-8 or a lone surrogate raises InvalidArgumentError."""
        return self._tok.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`. skip_special_tokens (default True, unlike Hugging Face's default)
        drops special tokens such as EOS; ids outside the vocabulary are skipped, negative ids
        raise InvalidArgumentError. Bytes that do not form UTF-8 come out as U+FFFD."""
        try:
            return self._tok.decode(ids, skip_special_tokens)
        except TypeError as exc:
            raise InvalidArgumentError(f"ids must be a sequence of integer token ids, got {type(ids).__name__}") from exc

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included (Hugging Face's get_vocab_size())."""
        return int(self._tok.vocab_size)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:  # noqa: A002 - Hugging Face's name
        return self._tok.id_to_token(id)

    def is_special(self, id: int) -> bool:  # noqa: A002
        """Whether `id` is a special added token (skipped by decode by default)."""
        return bool(self._tok.is_special(id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path or self._tok.source)!r}, vocab_size={self.vocab_size})"
