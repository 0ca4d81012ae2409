"""`tandem bench --quick` on the tiny bundle: files written and well-formed (no timing checks)."""

from __future__ import annotations

import json

import pytest

from tandem.cli import main


def test_bench_quick_writes_json_markdown_and_plots(pair, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", str(pair.bundle), "--quick", "--out", str(out), "--cost-reps", "2"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data["files"]) == {"results.json", "results.md", "speedup.png", "acceptance.png"}
    labels = {r["label"] for r in data["rows"]}
    assert {"large greedy", "speed γ=2 greedy", "vanilla γ=4 sampled", "tandem γ=2 greedy",
            "adaptive-speed γ=auto greedy"} <= labels
    for row in data["rows"]:
        assert row["error"] is None, row
        assert row["tokens_per_second"] > 0 and row["speedup"] > 0
        assert row["loop_share"] is not None and row["peak_rss_mb"] > 0
        if row["mode"] != "large":
            assert row["c"] > 0 and row["v"] > 0 and row["bound"] > 0
        if row["mode"] in ("speed", "vanilla") and row["decoding"] == "greedy":
            assert row["greedy_equals_large"] == "2/2"  # lossless
    assert data["costs"]["v"]["1"] == 1.0 and set(data["costs"]["c"]) == {"tandem_drafter", "plain_drafter"}
    assert data["machine"]["threads"] == 2 and data["machine"]["cpu_model"]
    assert "idle" in data and isinstance(data["warnings"], list)
    md = (out / "results.md").read_text()
    assert "| speed γ=2 greedy |" in md and "bound" in md
    for png in ("speedup.png", "acceptance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| large greedy |" in capsys.readouterr().out


def test_bench_peers_without_hf_folders_are_recorded_not_fatal(pair, tmp_path):
    out = tmp_path / "results"
    assert main(["bench", str(pair.bundle), "--quick", "--out", str(out), "--modes", "speed",
                 "--decoding", "greedy", "--peers", "hf", "--no-plots", "--cost-reps", "1"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["files"] == ["results.json", "results.md"]
    assert "Hugging Face folders" in data["peers"]["hf"]["errors"]["setup"]
    assert "not run" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--threads", "1000000"], "--threads=1000000 is above the cap of"),
])
def test_bench_rejects_bad_options(pair, tmp_path, capsys, argv, message):
    assert main(["bench", str(pair.bundle), "--quick", "--out", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err


def test_bench_bad_prompt_file(pair, tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    assert main(["bench", str(pair.bundle), "--quick", "--out", str(tmp_path), "--prompts", str(bad)]) == 1
    assert "is not valid JSON" in capsys.readouterr().err


def test_bench_help_lists_outputs(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "--quick" in text and "results.json" in text and "--block-lengths" in text
