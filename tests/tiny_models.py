"""Tiny random models and tokenizers for tests (importable by every test module).

Everything is built in-process from a seed, so nothing is downloaded:

    from tiny_models import tiny_large, tiny_tokenizer, tiny_large_folder
    large = tiny_large("qwen2", num_kv_heads=1, tie=True)
    folder = tiny_large_folder(tmp_path / "large", "llama")   # model + tokenizer.json

Run tests from the repo root (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tandem.train.data import train_tokenizer

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}

TINY_VOCAB = 300
SAMPLE_TEXT = (
    "def add(a, b):\n    return a + b\n\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "for i in range(10):\n    print(i * i)\n"
    "The quick brown fox jumps over the lazy dog. "
) * 8


def tiny_config(arch: str = "llama", num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4,
                num_kv_heads: int = 2, vocab_size: int = TINY_VOCAB, tie: bool = False,
                max_positions: int = 256, **extra: object) -> PretrainedConfig:
    """A tiny config of ``arch`` (``llama``, ``qwen2`` or ``mistral``); GQA when kv heads < heads.
    Head width 16 by default (ONNX Runtime's GroupQueryAttention needs a multiple of 16);
    ``extra`` goes to the config class (e.g. ``sliding_window``)."""
    config_cls, _ = ARCHITECTURES[arch]
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **extra,
    )


def tiny_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised fp32 model in eval mode; weights scaled up so logits are not flat."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[config.model_type][1](config).float().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


def tiny_large(arch: str = "llama", seed: int = 0, **config_kwargs: object) -> PreTrainedModel:
    """A tiny M_L (see :func:`tiny_config` for the keyword arguments)."""
    return tiny_model(tiny_config(arch, **config_kwargs), seed)


def tiny_tokenizer(folder: str | Path, vocab_size: int = TINY_VOCAB) -> Path:
    """A byte-level BPE of ``vocab_size`` tokens (EOS id 0) saved as an HF folder."""
    return train_tokenizer([SAMPLE_TEXT], vocab_size, folder)


def tiny_large_folder(folder: str | Path, arch: str = "llama", seed: int = 0,
                      **config_kwargs: object) -> Path:
    """A tiny M_L saved with its tokenizer: an HF folder ``AutoModelForCausalLM`` can read."""
    folder = Path(folder)
    tiny_large(arch, seed, **config_kwargs).save_pretrained(folder)
    tiny_tokenizer(folder)
    return folder


def tiny_corpus(folder: str | Path, num_files: int = 6) -> Path:
    """A folder of small Python-like text files (for data and training tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        lines = [f"def f{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(12)]
        (folder / f"mod{i}.py").write_text("".join(lines) + SAMPLE_TEXT[: 200 + 40 * i])
    return folder
