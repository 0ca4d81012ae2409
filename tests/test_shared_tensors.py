"""A tensor two graphs of a bundle hold (a drafter at M_L's width with M_L's embedding and LM
head) is stored once: the later graph's TensorProto points into the earlier graph's data file
(export/graph_writer.py `SharedData`), and the C++ core maps it once and lets ONNX Runtime
prepack it once for all sessions (cpp/src/graph.cpp `SharedWeights`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from tandem import _core
from tandem.errors import BundleError
from tandem.export import graph_writer
from tandem.export.bundle import export_bundle
from tandem.runtime import load

PROMPTS = [[1, 2, 3, 4], [17], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]

# The tensors a drafter with M_L's embedding and head shares with M_L, by precision (and
# whether M_L ties its embedding and head).
SHARED = {
    ("fp32", False): {"embed_tokens", "lm_head.weight"},
    ("int4", False): {"embed_tokens", "lm_head.qweight", "lm_head.scales"},
    ("int4", True): {"lm_head.qweight", "lm_head.scales", "embed.scales"},  # GatherBlockQuantized over the head
}


def external(folder: Path, file: str) -> dict[str, dict[str, str]]:
    """external_data of each initializer of `file` stored outside the .onnx file."""
    model = onnx.load(str(folder / file), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}


def stored_bytes(tensors: dict[str, dict[str, str]], names: set[str]) -> int:
    """Bytes of the distinct ranges `names` read (the head's scales are seen with two shapes)."""
    return sum(length for _, length in {(tensors[n]["offset"], int(tensors[n]["length"])) for n in names})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(model, prompt: list[int], mode: str, gamma: int = 3) -> list[int]:
    return _core.Generator(model, prompt, _core.GenerateOptions(mode=mode, block_length=gamma, max_new_tokens=24,
                                                                   ignore_eos=True)).run()


@dataclass
class Exported:
    precision: str
    tie: bool
    bundle: Path  # tandem + plain drafters at M_L's width with M_L's embedding and head
    unshared: Path  # the same models exported with the index off


def _models(tie: bool, copy_embeddings: bool = True):
    from tiny_models import tiny_large

    from tandem.train.model import create_drafter, create_drafter_config, create_tandem

    # vocab 4096 x width 128: the int4 head (256 KiB) and its scales (64 KiB) reach SHARE_MIN_BYTES
    large = tiny_large("qwen2", seed=5, num_layers=2, hidden_size=128, vocab_size=4096, tie=tie)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=128)
    tandem = create_tandem(large, cfg, router=True, seed=1, copy_embeddings=copy_embeddings)
    plain = create_drafter(large, cfg, seed=2, copy_embeddings=copy_embeddings)
    return large, tandem, plain


def _export(models, out: Path, precision: str, validate: bool = True) -> Path:
    large, tandem, plain = models
    export_bundle(large, out, tandem=tandem, plain=plain, context_length=64, max_block_length=8,
                  precision=precision, validate=validate, progress=None)
    return out


@pytest.fixture(scope="module", params=sorted(SHARED), ids=[f"{p}{'-tied' if t else ''}" for p, t in sorted(SHARED)])
def exported(request, tmp_path_factory) -> Exported:
    precision, tie = request.param
    tmp = tmp_path_factory.mktemp(f"shared-{precision}-{tie}")
    models = _models(tie)
    bundle = _export(models, tmp / "bundle", precision)  # validated in ONNX Runtime as it is written
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graph_writer, "SHARE_MIN_BYTES", 1 << 62)
        unshared = _export(models, tmp / "unshared", precision, validate=False)
    return Exported(precision, tie, bundle, unshared)


def test_drafters_read_the_shared_tensors_from_large_data(exported: Exported):
    want = SHARED[(exported.precision, exported.tie)]
    large = external(exported.bundle, "large.onnx")
    assert all(e["location"] == "large.onnx.data" for e in large.values())
    for graph in ("tandem_drafter.onnx", "plain_drafter.onnx"):
        tensors = external(exported.bundle, graph)
        elsewhere = {name for name, e in tensors.items() if e["location"] != graph + ".data"}
        assert elsewhere == want, graph
        for name in want:  # the very bytes of M_L's tensor of the same name
            assert tensors[name] == large[name], name
        shared_bytes = stored_bytes(tensors, want)
        own = (exported.bundle / (graph + ".data")).stat().st_size
        before = (exported.unshared / (graph + ".data")).stat().st_size
        assert before - own >= shared_bytes > 0, (graph, before, own, shared_bytes)
    # M_L's own file is as before
    assert sha256(exported.bundle / "large.onnx.data") == sha256(exported.unshared / "large.onnx.data")


def test_manifest_hashes_verify_each_graph_own_data_file(exported: Exported):
    manifest = json.loads((exported.bundle / "tandem.json").read_text())
    hashes = manifest["provenance"]["graphs"]
    for role in ("large", "tandem_drafter", "plain_drafter"):
        assert hashes[role] == sha256(exported.bundle / f"{role}.onnx")
        assert hashes[role + ".data"] == sha256(exported.bundle / f"{role}.onnx.data")
        assert role in manifest["validation"]  # every graph validated in ONNX Runtime


def test_cpp_loads_shared_tensors_once_and_speed_equals_large(exported: Exported):
    shared = _core.Model(str(exported.bundle), threads=1)
    alone = _core.Model(str(exported.bundle), threads=1, share_weights=False)
    tensors = external(exported.bundle, "tandem_drafter.onnx")
    want = stored_bytes(tensors, SHARED[(exported.precision, exported.tie)])
    assert shared.shared_weight_bytes == want and alone.shared_weight_bytes == 0
    for prompt in PROMPTS:
        expected = generate(shared, prompt, "large")
        assert len(expected) == 24
        for model in (shared, alone):
            assert generate(model, prompt, "large") == expected
            for gamma in (1, 3):
                assert generate(model, prompt, "speed", gamma) == expected, (prompt, gamma)
                assert generate(model, prompt, "vanilla", gamma) == expected, (prompt, gamma)
    # through the Python API too
    model = load(exported.bundle, threads=1)
    assert model.generate(PROMPTS[0], mode="speed", max_new_tokens=24, ignore_eos=True).ids == \
        generate(shared, PROMPTS[0], "large")


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_self_drafter_shares_every_weight_and_accepts_every_draft(tmp_path, precision):
    """A plain drafter that is M_L itself: every big tensor of plain_drafter.onnx is M_L's, and the
    drafter on the shared prepacked weights proposes exactly what M_L accepts."""
    from tiny_models import tiny_large

    large = tiny_large("llama", seed=4, num_layers=2, hidden_size=128, vocab_size=4096)
    bundle = tmp_path / "b"
    export_bundle(large, bundle, plain=large, context_length=64, precision=precision, progress=None)
    draft = external(bundle, "plain_drafter.onnx")
    big = {n for n, e in draft.items() if int(e["length"]) >= graph_writer.SHARE_MIN_BYTES}
    assert big and all(draft[n]["location"] == "large.onnx.data" for n in big)
    model = _core.Model(str(bundle), threads=1)
    assert model.shared_weight_bytes >= stored_bytes(draft, big)
    for prompt in PROMPTS:
        gen = _core.Generator(model, prompt, _core.GenerateOptions(mode="vanilla", block_length=4, max_new_tokens=24,
                                                                  ignore_eos=True))
        assert gen.run() == generate(model, prompt, "large")
        assert gen.stats["acceptance_rate"] == 1.0


def test_drafters_of_another_width_share_nothing(pair):
    for graph in ("tandem_drafter.onnx", "plain_drafter.onnx"):
        assert all(e["location"] == graph + ".data" for e in external(pair.bundle, graph).values())
    assert _core.Model(str(pair.bundle), threads=1).shared_weight_bytes == 0


def test_drafters_at_the_width_with_their_own_embeddings_share_nothing(tmp_path):
    """Same shapes as M_L's tensors, other bytes: the content decides, not the shape."""
    bundle = _export(_models(tie=False, copy_embeddings=False), tmp_path / "b", "fp32", validate=False)
    for graph in ("tandem_drafter.onnx", "plain_drafter.onnx"):
        assert all(e["location"] == graph + ".data" for e in external(bundle, graph).values())
    assert _core.Model(str(bundle), threads=1).shared_weight_bytes == 0


# --------------------------------------------------------------------------- damaged references


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory) -> Path:
    return _export(_models(tie=False), tmp_path_factory.mktemp("shared-damage") / "bundle", "fp32", validate=False)


def _edit_reference(bundle: Path, graph: str, tensor: str, **entries: str) -> None:
    path = bundle / graph
    model = onnx.load(str(path), load_external_data=False)
    (init,) = [t for t in model.graph.initializer if t.name == tensor]
    for entry in init.external_data:
        if entry.key in entries:
            entry.value = entries[entry.key]
    path.write_bytes(model.SerializeToString())


LOADERS = [pytest.param(lambda p: load(p, threads=1), id="python"),
           pytest.param(lambda p: _core.Model(str(p), threads=1), id="core"),
           pytest.param(lambda p: _core.Model(str(p), threads=1, share_weights=False), id="core-unshared")]


def _damaged(fp32_bundle: Path, tmp_path: Path, kind: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, bundle)
    size = (bundle / "large.onnx.data").stat().st_size
    length = int(external(bundle, "tandem_drafter.onnx")["embed_tokens"]["length"])
    changes = {
        "offset_past_end": {"offset": str(size + 4096)},
        "length_past_end": {"offset": str(size - 4096)},
        "huge_offset": {"offset": str(2**64 - 4096)},
        "not_a_number": {"offset": "12ab"},
        "missing_file": {"location": "gone.onnx.data"},
    }[kind]
    assert length > 4096
    _edit_reference(bundle, "tandem_drafter.onnx", "embed_tokens", **changes)
    return bundle


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", ["offset_past_end", "length_past_end", "huge_offset"])
def test_reference_past_the_end_of_the_other_file_is_refused(fp32_bundle, tmp_path, loader, kind):
    bundle = _damaged(fp32_bundle, tmp_path, kind)
    with pytest.raises(BundleError, match=r"tandem_drafter\.onnx.*embed_tokens.*large\.onnx\.data.*re-export"):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
def test_malformed_reference_is_refused(fp32_bundle, tmp_path, loader):
    with pytest.raises(BundleError, match=r"tandem_drafter\.onnx.*embed_tokens.*offset.*12ab"):
        loader(_damaged(fp32_bundle, tmp_path, "not_a_number"))
    with pytest.raises(BundleError, match=r"tandem_drafter\.onnx.*gone\.onnx\.data.*missing"):
        loader(_damaged(fp32_bundle, tmp_path / "2", "missing_file"))


def test_reference_to_a_moved_bundle_still_loads(fp32_bundle, tmp_path):
    """Locations are bare file names: a bundle moved or renamed as a whole still loads."""
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(fp32_bundle, moved)
    model = _core.Model(str(moved), threads=1)
    assert model.shared_weight_bytes > 0
    assert generate(model, PROMPTS[0], "speed") == generate(model, PROMPTS[0], "large")
