"""`python -m tandem.bench.block_size` on a tiny model: one row per precision and block size,
consistent figures and the files written (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_large_folder

from tandem.bench import block_size


def test_block_size_bench_writes_a_row_per_block_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    hf = tiny_large_folder(tmp_path / "large", num_layers=2)
    out = tmp_path / "out"
    assert block_size.main(["--hf", str(hf), "--sizes", "16,32", "--window", "16", "--windows", "3",
                            "--rounds", "1", "--steps", "2", "--past-len", "4", "--threads", "1",
                            "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data["files"]) == {"results.json", "results.md", "block_size.png"}
    rows = {(r["precision"], r["block_size"]): r for r in data["rows"]}
    assert set(rows) == {("fp32", None), ("int4", 16), ("int4", 32)}
    assert rows[("fp32", None)]["argmax_agreement_with_fp32"] == 1.0
    for r in rows.values():
        assert r["positions"] == 3 * 15 and r["nll"] > 0 and r["step_ms"] > 0 and r["weights_mb"] > 0
        assert 0.0 <= r["argmax_agreement_with_fp32"] <= 1.0
    # smaller blocks store more scales; int4 stores far less than fp32
    assert rows[("int4", 16)]["weights_mb"] > rows[("int4", 32)]["weights_mb"]
    assert rows[("fp32", None)]["weights_mb"] > 2 * rows[("int4", 16)]["weights_mb"]
    # the graphs really are quantized at their sizes: the same text gives different logits
    assert rows[("int4", 16)]["nll"] != rows[("int4", 32)]["nll"]
    assert "| int4 | 16 |" in (out / "results.md").read_text()
    assert "wrote results.json" in capsys.readouterr().out


def test_block_size_bench_rejects_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert block_size.main(["--hf", str(tmp_path), "--sizes", "48", "--out", str(tmp_path / "o")]) == 2
    assert "--sizes must be among" in capsys.readouterr().err
    assert block_size.main(["--hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a Hugging Face folder" in capsys.readouterr().err
