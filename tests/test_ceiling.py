"""`python -m tandem.bench.ceiling`: the speedup model and its report (no timing checks)."""

from __future__ import annotations

import json

import pytest

from tandem.bench import ceiling


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_tokens_per_round_matches_the_sum_of_acceptance_powers(gamma):
    for alpha in (0.0, 0.3, 0.75, 1.0):
        assert ceiling.tokens_per_round(alpha, gamma) == pytest.approx(sum(alpha ** i for i in range(gamma + 1)))
    with pytest.raises(ValueError):
        ceiling.tokens_per_round(1.5, gamma)


@pytest.mark.parametrize("gamma,c,v", [(1, 0.1, 1.2), (2, 0.05, 1.4), (4, 0.2, 2.0)])
def test_alpha_needed_is_the_least_alpha_reaching_the_target(gamma, c, v):
    top = ceiling.speedup(1.0, gamma, c, v)
    assert top == pytest.approx((gamma + 1) / (gamma * c + v))
    assert ceiling.alpha_needed(top * 1.01, gamma, c, v) is None  # beyond the ceiling
    assert ceiling.alpha_needed(0.5 / (gamma * c + v), gamma, c, v) == 0.0  # met with no acceptance at all
    for target in (1.0, (1.0 + top) / 2, top * 0.999):
        a = ceiling.alpha_needed(target, gamma, c, v)
        assert a is not None and 0.0 <= a <= 1.0
        assert ceiling.speedup(a, gamma, c, v) >= target
        assert ceiling.speedup(max(0.0, a - 1e-3), gamma, c, v) < target


def test_rows_model_each_cost_set_and_set_measured_alpha_against_the_prediction():
    costs = {"c": {"tandem_drafter": 0.1, "plain_drafter": 0.08}, "v": {"1": 1.0, "2": 1.2, "3": 1.5}}
    in_loop = {"speed": {"c": 0.12, "beta": 0.25}}
    measured = ceiling.measured_alphas({"rows": [
        {"family": "speed", "decoding": "greedy", "block_length": 1, "alpha": 0.4, "speedup": 1.05},
        {"family": "adaptive-speed", "decoding": "greedy", "block_length": "auto", "alpha": 0.5, "speedup": 1.2},
        {"family": "large", "decoding": "greedy", "block_length": 1, "alpha": None, "speedup": 1.0}]})
    assert measured == {("speed", "greedy", 1): {"alpha": 0.4, "speedup": 1.05}}
    rows = ceiling.ceiling_rows(ceiling.cost_sets(costs, in_loop, [1, 2, 3]), [1, 2, 3], [1.5], measured)
    # γ = 3 needs v(4), which no set has; in-loop exists for speed only
    assert sorted((r["mode"], r["costs"], r["gamma"]) for r in rows) == [
        ("speed", "dedicated", 1), ("speed", "dedicated", 2), ("speed", "in-loop", 1), ("speed", "in-loop", 2),
        ("vanilla", "dedicated", 1), ("vanilla", "dedicated", 2)]
    r = next(r for r in rows if r["mode"] == "speed" and r["costs"] == "in-loop" and r["gamma"] == 1)
    assert r["round_cost"] == pytest.approx(0.12 + 1.25)
    assert r["greedy"]["predicted"] == pytest.approx(1.4 / 1.37) and r["greedy"]["achieved"] == 1.05
    assert "sampled" not in r
    assert r["alpha_needed"]["1.5"] is None  # 2 / 1.37 < 1.5


def test_ceiling_cli_on_a_bundle_writes_json_markdown_and_plot(pair, tmp_path, capsys):
    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"rows": [
        {"family": "vanilla", "decoding": "sampled", "block_length": 2, "alpha": 0.3, "speedup": 0.9}]}))
    out = tmp_path / "ceiling"
    assert ceiling.main([str(pair.bundle), "--results", str(results), "--gammas", "1,2", "--reps", "2",
                         "--past-len", "8", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data["files"]) == {"results.json", "results.md", "ceiling.png"}
    assert data["costs"]["v"]["1"] == 1.0 and set(data["costs"]["v"]) == {"1", "2", "3"}
    assert set(data["in_loop"]) == {"speed", "vanilla"}
    assert {(r["mode"], r["costs"]) for r in data["rows"]} == {
        ("speed", "dedicated"), ("speed", "in-loop"), ("vanilla", "dedicated"), ("vanilla", "in-loop")}
    assert all(r["ceiling"] == pytest.approx((r["gamma"] + 1) / r["round_cost"]) for r in data["rows"])
    sampled = [r for r in data["rows"] if r.get("sampled")]
    assert sampled and all(r["mode"] == "vanilla" and r["gamma"] == 2 for r in sampled)
    profile = data["profile"]["us_per_call"]
    assert set(profile) == {"1", "2", "3"} and all(w["LM head"] > 0 and w["layer matmuls"] > 0 for w in profile.values())
    md = (out / "results.md").read_text()
    assert "| speed | in-loop | 1 |" in md and "per extra token" in md
    assert (out / "ceiling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote results.json" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--gammas", "0"], "--gammas"), (["--targets", "x"], "--targets"), (["--reps", "0"], "--reps")])
def test_ceiling_cli_rejects_bad_options(pair, tmp_path, capsys, argv, message):
    assert ceiling.main([str(pair.bundle), "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
