"""The manifest's two sides agree: what the exporter writes (tandem/manifest.py) is exactly
what the C++ reader (cpp/include/tandem/manifest.hpp, the only reader) knows, and the reader
requires every key it reads, so no default of its own can stand in for the exporter's."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from tandem import _core
from tandem.errors import BundleError
from tandem.manifest import FORMAT_VERSION, GRAPH_ROLES, GraphSpec, Manifest
from tandem.runtime import load

READER = _core.manifest_keys()  # {"bundle": {key: read}, "graph": {key: read}}


def test_writer_fields_are_the_reader_keys():
    assert {f.name for f in fields(Manifest)} == set(READER["bundle"])
    assert {f.name for f in fields(GraphSpec)} == set(READER["graph"])
    assert FORMAT_VERSION == _core.MANIFEST_FORMAT_VERSION
    # the informational sections are the only keys the reader skips
    assert {k for k, read in READER["bundle"].items() if not read} == {"build", "provenance", "validation"}


def test_exported_manifest_has_every_key(pair):
    written = json.loads((pair.bundle / "tandem.json").read_text())
    assert set(written) == set(READER["bundle"])
    assert set(written["graphs"]) == set(GRAPH_ROLES)
    for spec in written["graphs"].values():
        assert set(spec) == set(READER["graph"])


@pytest.fixture
def bundle(pair, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(pair.bundle, dst)
    return dst


def test_reader_requires_every_key_it_reads(bundle):
    original = json.loads((bundle / "tandem.json").read_text())

    def read_without(drop) -> None:
        data = json.loads(json.dumps(original))
        drop(data)
        (bundle / "tandem.json").write_text(json.dumps(data))
        _core.read_manifest(str(bundle))

    for key, read in READER["bundle"].items():
        if read and key != "format":
            with pytest.raises(BundleError, match=f'missing key "{key}"; re-export'):
                read_without(lambda d, key=key: d.pop(key))
        elif not read:
            read_without(lambda d, key=key: d.pop(key))  # informational: not needed at run time
    for key, read in READER["graph"].items():
        for role in GRAPH_ROLES:
            if read:
                with pytest.raises(BundleError, match=f'graphs.{role}: missing key "{key}"'):
                    read_without(lambda d, key=key, role=role: d["graphs"][role].pop(key))
            else:
                read_without(lambda d, key=key, role=role: d["graphs"][role].pop(key))
    with pytest.raises(BundleError, match="not a tandem manifest"):
        read_without(lambda d: d.pop("format"))


def test_bundles_of_another_format_are_refused_with_re_export(bundle):
    data = json.loads((bundle / "tandem.json").read_text())
    data["format_version"] = 2  # small / draft roles, optional keys: read by an older tandem
    (bundle / "tandem.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"format_version 2 is not supported .*reads {FORMAT_VERSION}.*re-export"):
        _core.read_manifest(str(bundle))


def test_format_3_single_router_bundles_are_refused(bundle):
    """Format 3 had one `router_score` per drafter for both decoding modes: refused, re-export."""
    data = json.loads((bundle / "tandem.json").read_text())
    data["format_version"] = 3
    for spec in data["graphs"].values():
        spec["router_score"] = spec.pop("router_score_greedy")
        del spec["router_score_sampled"]
    (bundle / "tandem.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 3 is not supported.*re-export"):
        _core.read_manifest(str(bundle))


@pytest.mark.parametrize(("greedy", "sampled", "match"), [
    ("router_score_greedy", "", "both name an output or both be empty"),
    ("", "router_score_sampled", "both name an output or both be empty"),
    ("router_score_greedy", "router_score_greedy", "three different outputs"),
    ("logits", "router_score_sampled", "three different outputs"),
])
def test_router_outputs_come_in_pairs(bundle, greedy, sampled, match):
    data = json.loads((bundle / "tandem.json").read_text())
    spec = data["graphs"]["plain_drafter"]
    assert (spec["router_score_greedy"], spec["router_score_sampled"]) == ("router_score_greedy",
                                                                           "router_score_sampled")
    spec["router_score_greedy"], spec["router_score_sampled"] = greedy, sampled
    (bundle / "tandem.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"graphs.plain_drafter: .*{match}"):
        _core.read_manifest(str(bundle))


def test_swapped_router_names_load(bundle):
    """The names are data: a bundle whose graph outputs are named otherwise loads when the
    manifest names them (here: the two swapped, which the loop then reads swapped)."""
    data = json.loads((bundle / "tandem.json").read_text())
    spec = data["graphs"]["tandem_drafter"]
    spec["router_score_greedy"], spec["router_score_sampled"] = spec["router_score_sampled"], spec["router_score_greedy"]
    (bundle / "tandem.json").write_text(json.dumps(data))
    read = load(bundle, threads=1).manifest.graphs["tandem_drafter"]  # the graph's outputs checked too
    assert (read.router_score_greedy, read.router_score_sampled) == ("router_score_sampled", "router_score_greedy")


def test_read_manifest_gives_python_what_it_needs(pair):
    m = _core.read_manifest(str(pair.bundle))
    assert Path(m.folder) == pair.bundle.resolve() and list(m.graphs) == list(GRAPH_ROLES)
    assert Path(m.tokenizer) == pair.bundle.resolve() / "tokenizer.json"
    written = json.loads((pair.bundle / "tandem.json").read_text())
    for key in ("vocab_size", "context_length", "eos_token_ids", "default_block_length", "max_block_length",
                "precision", "special_tokens", "bos_token_id", "pad_token_id"):
        assert getattr(m, key) == written[key], key
    assert m.router_threshold == pytest.approx(written["router_threshold"])
    for role, spec in m.graphs.items():
        assert spec.role == role and Path(spec.file) == pair.bundle.resolve() / written["graphs"][role]["file"]
        for key, read in READER["graph"].items():
            if read and key != "file":
                assert getattr(spec, key) == written["graphs"][role][key], (role, key)
