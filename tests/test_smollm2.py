"""SmolLM2-135M-Instruct converted from the PyPI GGUF (scripts/smollm2_hf.py).

The permutation test always runs (numpy only). The others need the converted folder and skip
unless TANDEM_SMOLLM2 points to it (nothing here downloads):

    python scripts/smollm2_hf.py --out build/realsize/models/smollm2-135m
    TANDEM_SMOLLM2=build/realsize/models/smollm2-135m pytest tests/test_smollm2.py
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "smollm2_hf.py"
FOLDER = Path(os.environ["TANDEM_SMOLLM2"]) if os.environ.get("TANDEM_SMOLLM2") else None
needs_folder = pytest.mark.skipif(FOLDER is None or not (FOLDER / "config.json").is_file(),
                                  reason="set TANDEM_SMOLLM2 to a folder written by scripts/smollm2_hf.py")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smollm2_hf", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permutation(n_head: int) -> None:
    conv = _script()
    rng = np.random.default_rng(n_head)
    w = rng.standard_normal((n_head * 64, 40)).astype(np.float32)
    permuted = conv.permute(w, n_head)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(conv.unpermute(permuted, n_head), w)
    # llama.cpp's layout: within a head, rotate-half pairs (i, i + d/2) become neighbours (2i, 2i + 1)
    head = w[:64]
    np.testing.assert_array_equal(permuted[0:64:2], head[:32])
    np.testing.assert_array_equal(permuted[1:64:2], head[32:])


def test_gguf_names_map_to_hugging_face() -> None:
    conv = _script()
    assert conv.hf_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert conv.hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert conv.hf_name("blk.29.ffn_norm.weight") == "model.layers.29.post_attention_layernorm.weight"
    assert conv.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert conv.hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(SystemExit):
        conv.hf_name("blk.0.attn_qkv.weight")


@needs_folder
def test_tokenizer_reproduces_smollm2_ids() -> None:
    assert FOLDER is not None
    assert _script().check_tokenizer(FOLDER) == []


@needs_folder
def test_greedy_answer_and_next_token_accuracy() -> None:
    assert FOLDER is not None
    result = _script().check_model(FOLDER, new_tokens=12)
    assert "Paris" in result["samples"]["chat: What is the capital of France?"]
    assert result["next_token_accuracy"] > 0.25  # chance: 2e-5
    assert result["perplexity"] < 40


@needs_folder
def test_fp32_export_validates_and_matches_reference_on_text(tmp_path: Path) -> None:
    """Our exporter on a trained model: the fp32 bundle passes validation, and on real text its
    logits equal the float32 reference (tandem.bench.quality, ours only)."""
    from tandem.bench.quality import compare_quality
    from tandem.cli import main

    assert FOLDER is not None
    bundle = tmp_path / "bundle"
    assert main(["export", "--large", str(FOLDER), "--out", str(bundle), "--precision", "fp32",
                 "--context-length", "128"]) == 0
    result = compare_quality(FOLDER, bundle, None, cases=2, tokens=32)
    assert result["prompts"] == "text"
    assert result["ours"]["argmax_agreement"] == 1.0
    assert result["ours"]["rel_l2"] < 1e-4
    assert abs(result["ours"]["nll"] - result["fp32"]["nll"]) < 1e-3
    assert result["fp32"]["nll"] < 3.5  # a trained model on English / code
