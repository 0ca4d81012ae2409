"""The real-size benchmark's random-weight Hugging Face folders: they must export to a bundle the
runtime loads (its tokenizer included), or `python -m tandem.bench.realsize` measures nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import tandem  # noqa: E402
from tandem.bench.random_models import make_random_model  # noqa: E402
from tandem.export.bundle import export_bundle  # noqa: E402


def test_random_model_folder_exports_and_runs(tmp_path):
    folder = make_random_model("qwen2-tiny", tmp_path / "hf")
    export_bundle(folder, tmp_path / "bundle", plain=folder)
    model = tandem.load(tmp_path / "bundle", threads=1)
    assert model.tokenizer.encode("<t5>")  # the bundle's tokenizer loads in the C++ core
    large = model.generate([3, 1, 4, 1, 5], mode="large", max_new_tokens=6, ignore_eos=True)
    vanilla = model.generate([3, 1, 4, 1, 5], mode="vanilla", block_length=3, max_new_tokens=6, ignore_eos=True)
    assert len(large.ids) == 6 and vanilla.ids == large.ids
