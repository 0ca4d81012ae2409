"""`make demo` (tandem/demo.py) on the tiny fixture bundle: it streams an answer and prints one
row per mode the bundle has, each speculative one equal to `large` token for token."""

from __future__ import annotations

from tiny_bundle import TINY_BUNDLE

from tandem.demo import main


def test_demo_table_has_every_mode_and_they_are_lossless(capsys):
    assert main(["--bundle", str(TINY_BUNDLE), "--question", "def add(a, b):", "--max-new-tokens", "12",
                 "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "no chat template in this bundle" in out  # the tiny pair has none: completed as text
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config"))
    rows = {line.split("  ")[0].strip(): line.split() for line in lines[start + 1:] if line.strip()
            and not line.startswith("(")}
    gamma = 4  # the tiny bundle's default block length
    assert set(rows) == {"large", f"vanilla γ={gamma}", f"speed γ={gamma}", f"vanilla adaptive (≤{gamma})",
                         f"speed adaptive (≤{gamma})"}
    assert rows["large"][-1] == "-"
    for label, cells in rows.items():
        if label != "large":
            assert cells[-1] == "yes", (label, cells)
            assert 0.0 <= float(cells[-2]) <= 1.0  # acceptance


def test_demo_rejects_bad_repeats():
    import pytest

    with pytest.raises(SystemExit):
        main(["--bundle", str(TINY_BUNDLE), "--repeats", "0"])
