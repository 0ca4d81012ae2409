"""Text data: tokenizer training/loading, file collection, held-out split, batches.

The held-out split is decided per file from the SHA-256 of its bytes, so it never changes
when files are added, removed or renamed. Each file's tokens are followed by EOS (when the
tokenizer has one) and concatenated into one stream per split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from tandem.errors import TrainingError

EOS_TOKEN = "<|endoftext|>"
DEFAULT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".c", ".h", ".cpp", ".hpp", ".js", ".ts", ".rs", ".go",
                    ".java", ".sh", ".json", ".toml", ".yaml", ".yml")


def train_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | Path) -> Path:
    """Train a byte-level BPE on ``texts`` and save it as an HF tokenizer folder.

    The folder holds ``tokenizer.json`` (readable by ``tokenizers``) and the
    ``tokenizer_config.json`` that ``AutoTokenizer`` needs; EOS is ``<|endoftext|>``.
    """
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise TrainingError(f"vocab size {vocab_size} is below the 256 bytes + EOS of a byte-level BPE")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    folder = Path(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                            pad_token=EOS_TOKEN).save_pretrained(folder)
    return folder


@dataclass
class TextTokenizer:
    """The ``tokenizers`` tokenizer of an HF folder and its EOS id (None when it has none)."""

    tokenizer: Tokenizer
    eos_id: int | None

    @classmethod
    def load(cls, folder: str | Path) -> TextTokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise TrainingError(
                f"{folder} has no tokenizer.json; M_L's folder must include its (fast) tokenizer, "
                "e.g. save it with AutoTokenizer.from_pretrained(...).save_pretrained(folder)"
            )
        tokenizer = Tokenizer.from_file(str(path))
        eos = None
        config_path = folder / "tokenizer_config.json"
        if config_path.exists():
            eos = json.loads(config_path.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
        return cls(tokenizer, tokenizer.token_to_id(eos) if eos else None)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_document(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids if self.eos_id is None else ids + [self.eos_id]


def collect_files(paths: Sequence[str | Path], suffixes: Sequence[str] = DEFAULT_SUFFIXES) -> list[Path]:
    """Files given directly, plus files under given folders whose suffix is in ``suffixes``; sorted."""
    files: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        else:
            raise TrainingError(f"data path {path} does not exist")
    if not files:
        raise TrainingError(f"no text files ({', '.join(suffixes)}) under {', '.join(map(str, paths))}")
    return sorted(files)


def heldout_score(data: bytes) -> float:
    """A number in [0, 1) fixed by the file's content: files scoring below the fraction are held out."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


MIN_HELDOUT_TOKENS = 10_000  # below this, held-out figures are noise (e.g. ±1.5 points of accuracy at 4k)


@dataclass
class Corpus:
    """Token streams (1-D long tensors) of the training and held-out files."""

    train: Tensor
    heldout: Tensor

    def heldout_problem(self, minimum: int = MIN_HELDOUT_TOKENS) -> str | None:
        """Why the held-out split is too small to report on, or None when it is large enough."""
        if self.heldout.numel() >= minimum:
            return None
        return (f"only {self.heldout.numel()} held-out tokens (< {minimum}): accuracy measured on so few "
                f"tokens is noise. Add data files, raise --heldout-fraction (files are held out whole, "
                f"by content hash), or set --min-heldout-tokens lower to accept it")

    @classmethod
    def build(cls, paths: Sequence[str | Path], tokenizer: TextTokenizer, heldout_fraction: float = 0.05,
              suffixes: Sequence[str] = DEFAULT_SUFFIXES) -> Corpus:
        """Split files by content hash; with none below the fraction, hold out the lowest-scoring one."""
        scored = []
        for path in collect_files(paths, suffixes):
            data = path.read_bytes()
            scored.append((heldout_score(data), data.decode("utf-8", errors="replace")))
        if len(scored) < 2:
            raise TrainingError("need at least 2 data files: one is held out for evaluation")
        scored.sort(key=lambda item: item[0])
        n_heldout = max(1, sum(score < heldout_fraction for score, _ in scored))
        streams = [
            [tok for _, text in part for tok in tokenizer.encode_document(text)]
            for part in (scored[n_heldout:], scored[:n_heldout])
        ]
        return cls(*(torch.tensor(ids, dtype=torch.long) for ids in streams))


def sample_windows(stream: Tensor, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """``batch`` random windows of ``length`` tokens: ``(B, length)``."""
    if stream.numel() <= length:
        raise TrainingError(f"{stream.numel()} tokens of data cannot fill one window of {length}; "
                            "add data or lower --seq-len")
    starts = torch.randint(stream.numel() - length + 1, (batch,), generator=generator)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])


def consecutive_windows(stream: Tensor, length: int, max_windows: int | None = None) -> Tensor:
    """Non-overlapping windows of ``length`` tokens from the start: ``(W, length)``."""
    count = stream.numel() // length
    if count == 0:
        raise TrainingError(f"{stream.numel()} held-out tokens cannot fill one window of {length}; "
                            "add data, raise --heldout-fraction or lower --seq-len")
    if max_windows is not None:
        count = min(count, max_windows)
    return stream[: count * length].view(count, length)
