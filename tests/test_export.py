"""`tandem export` as a user meets it: Hugging Face folders (sharded, bfloat16), validation that
judges by scale and names the first wrong tensor, and an --out folder that a failure or
Ctrl-C leaves as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_models import tiny_large, tiny_large_folder

from tandem._core import read_manifest
from tandem.errors import ExportError
from tandem.export.bundle import export_bundle
from tandem.export.checkpoint import Checkpoint
from tandem.export.validate import validate_graph


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_folder_export_equals_module_export(tmp_path: Path):
    """A sharded safetensors folder is read tensor by tensor into the very same graphs as the
    in-process model; bfloat16 checkpoints are widened exactly."""
    large = tiny_large("qwen2", num_layers=2, tie=True)
    large.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    export_bundle(tmp_path / "hf", tmp_path / "from_folder", context_length=32, progress=None)
    export_bundle(large, tmp_path / "from_module", context_length=32, progress=None)
    a, b = _digest(tmp_path / "from_folder"), _digest(tmp_path / "from_module")
    assert a["large.onnx.data"] == b["large.onnx.data"] and a["large.onnx"] == b["large.onnx"]

    large.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ckpt = Checkpoint.from_folder(tmp_path / "bf16")
    name = "model.layers.0.mlp.down_proj.weight"
    want = large.state_dict()[name].float().numpy()
    assert ckpt.tensors.get(name).dtype == np.float32
    assert np.array_equal(ckpt.tensors.get(name), want)
    manifest = export_bundle(tmp_path / "bf16", tmp_path / "bf16_bundle", context_length=32, progress=None)
    assert manifest.validation["large"]["max_rel_diff"] <= 1e-4


def test_large_logits_pass_validation(tmp_path: Path):
    """A Qwen2 model whose logits reach ±30 (weights scaled up) passes the default validation:
    the tolerance follows each output's scale."""
    large = tiny_large("qwen2", num_layers=2, tie=False)
    with torch.no_grad():
        large.lm_head.weight.mul_(12.0)
        for layer in large.model.layers:
            layer.mlp.down_proj.weight.mul_(3.0)
    manifest = export_bundle(large, tmp_path / "b", context_length=32, progress=None)
    figures = manifest.validation["large"]
    assert figures["max_abs_diff"]["logits"] > 0
    from tandem.export.validate import CASES, case_inputs, run_graph

    spec = manifest.graphs["large"]
    logits = run_graph(tmp_path / "b" / spec.file, spec, [case_inputs(spec, CASES["large"][0])])[0]["logits"]
    assert np.abs(logits).max() >= 30, "the test model should have large logits"
    assert figures["max_rel_diff"] <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_validation_names_the_first_wrong_tensor(tmp_path: Path, precision: str):
    """A graph whose layer-1 K/V projection was damaged after building is refused, and the
    error names present.1.key, the first output that diverges, in graph order."""
    large = tiny_large("llama", num_layers=3)
    manifest = export_bundle(large, tmp_path / "b", context_length=32, precision=precision, progress=None)
    spec = manifest.graphs["large"]
    graph = tmp_path / "b" / spec.file
    model = onnx.load(str(graph), load_external_data=False)
    target = next(t for t in model.graph.initializer if t.name.startswith("layers.1.attn.qkv."))
    info = {e.key: e.value for e in target.external_data}
    data = tmp_path / "b" / info["location"]
    raw = bytearray(data.read_bytes())
    start, length = int(info["offset"]), int(info["length"])
    rng = np.random.default_rng(0)
    raw[start:start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    data.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"first at present\.1\.key"):
        validate_graph(graph, spec, Checkpoint.from_module(large), "large", precision=precision, context_length=32)


def test_failed_export_leaves_out_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A failure (here Ctrl-C during validation) leaves an existing bundle untouched and no
    scratch folder behind; a successful export then replaces it."""
    import tandem.export.bundle as bundle_module

    large = tiny_large("llama", num_layers=2)
    out = tmp_path / "bundle"
    export_bundle(large, out, context_length=32, progress=None)
    before = _digest(out)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module, "validate_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_large("llama", num_layers=2, seed=5), out, context_length=32, progress=None)
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    monkeypatch.undo()
    export_bundle(tiny_large("llama", num_layers=2, seed=5), out, context_length=32, progress=None)
    assert _digest(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a tandem bundle; refusing to replace"):
        export_bundle(tiny_large("llama", num_layers=1), out, context_length=32, progress=None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_export_from_folder_with_progress(tmp_path: Path):
    """`tandem export` on Hugging Face folders: per-layer progress bars, a validated int4
    bundle the runtime loads."""
    folder = tiny_large_folder(tmp_path / "hf", "llama", num_layers=2)
    out = subprocess.run([sys.executable, "-m", "tandem.cli", "export", "--large", str(folder), "--plain", str(folder),
                          "--out", str(tmp_path / "b"), "--precision", "int4", "--context-length", "48"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "large.onnx (int4)" in out.stderr and "2/2" in out.stderr  # tqdm bars count layers
    assert "validated large.onnx (int4)" in out.stdout
    manifest = read_manifest(str(tmp_path / "b"))
    assert set(manifest.graphs) == {"large", "plain_drafter"}
    assert json.loads((tmp_path / "b" / "tandem.json").read_text())["provenance"]["large"]["hash"]
    from tandem.runtime import load

    model = load(tmp_path / "b", threads=1)
    assert len(model.generate([1, 2, 3], mode="vanilla", max_new_tokens=5, ignore_eos=True).ids) == 5
