#!/usr/bin/env python
"""Adaptive drafting with the router of the decoding mode vs the other mode's router.

Loads a bundle, and a copy of it whose `tandem.json` swaps the names of the two router outputs
(so greedy decoding reads the sampled router and sampling the greedy one: what one router for
both modes amounts to), and decodes the benchmark prompts adaptively in speed and vanilla
modes, greedy and sampled, at several τ. Reports counts only (tokens per M_L call, drafts per
round, acceptance, drafter calls per token): they do not depend on the machine's load.

    .venv/bin/python scripts/router_modes.py                      # the default pair
    .venv/bin/python scripts/router_modes.py --bundle B --out docs/results/router_modes_mine
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def swapped_copy(bundle: Path, folder: Path) -> Path:
    """`bundle` copied into `folder` with each drafter's two router output names swapped."""
    out = folder / "swapped"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "tandem.json").read_text())
    for spec in manifest["graphs"].values():
        spec["router_score_greedy"], spec["router_score_sampled"] = spec["router_score_sampled"], spec["router_score_greedy"]
    (out / "tandem.json").write_text(json.dumps(manifest, indent=2))
    return out


def main() -> int:
    import tandem
    from tandem.errors import UntrainedBlockLengthWarning

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "tandem/models/default/bundle")
    p.add_argument("--out", type=Path, default=REPO / "docs/results/router_modes_default")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--max-block-length", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    a = p.parse_args()
    prompts = [item["prompt"] for item in json.loads((REPO / "bench/prompts.json").read_text())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {"own": a.bundle, "other mode's": swapped_copy(a.bundle, Path(tmp))}
        for router, bundle in bundles.items():
            model = tandem.load(bundle, threads=1)
            modes = [m for m, role in (("speed", "tandem_drafter"), ("vanilla", "plain_drafter"))
                     if model.manifest.graphs.get(role) and model.manifest.graphs[role].router_score_greedy]
            for mode in modes:
                for sample in (False, True):
                    for tau in a.thresholds:
                        total = dict(new_tokens=0, large_calls=0, drafter_calls=0, drafted=0, accepted=0, rounds=0)
                        for i, prompt in enumerate(prompts):
                            draws = dict(do_sample=True, temperature=1.0, seed=i) if sample else {}
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", UntrainedBlockLengthWarning)
                                r = model.generate(prompt, mode=mode, block_length="auto", router_threshold=tau,
                                                   max_block_length=a.max_block_length,
                                                   max_new_tokens=a.max_new_tokens, ignore_eos=True, **draws)
                            for k in total:
                                total[k] += r.stats[k]
                        rows.append({"mode": mode, "decoding": "sampled (T=1)" if sample else "greedy", "tau": tau,
                                     "router": router, **total,
                                     "tokens_per_large_call": total["new_tokens"] / total["large_calls"],
                                     "drafts_per_round": total["drafted"] / total["rounds"],
                                     "acceptance": total["accepted"] / max(1, total["drafted"]),
                                     "drafter_calls_per_token": total["drafter_calls"] / total["new_tokens"]})
    rows.sort(key=lambda r: (r["mode"], r["decoding"], r["tau"], r["router"] != "own"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    name = str(a.bundle.resolve().relative_to(REPO)) if a.bundle.resolve().is_relative_to(REPO) else str(a.bundle)
    a.out.with_suffix(".json").write_text(json.dumps({"bundle": name, "prompts": len(prompts), "rows": rows,
                                                     "max_block_length": a.max_block_length,
                                                     "max_new_tokens": a.max_new_tokens}, indent=2))
    lines = [f"Adaptive drafting on `{name}` ({len(prompts)} prompts of bench/prompts.json × "
             f"{a.max_new_tokens} tokens, max_block_length {a.max_block_length}, min_block_length 1): each decoding "
             "mode reading its own router vs the other mode's (`scripts/router_modes.py`; counts, no timing).", "",
             "| mode | decoding | τ | router read | tokens per M_L call | drafts per round | acceptance | "
             "drafter calls per token |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['mode']} | {r['decoding']} | {r['tau']} | {r['router']} | {r['tokens_per_large_call']:.3f} | "
              f"{r['drafts_per_round']:.2f} | {r['acceptance']:.3f} | {r['drafter_calls_per_token']:.3f} |"
              for r in rows]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
