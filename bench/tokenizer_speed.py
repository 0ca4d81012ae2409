"""Encode speed of tandem's C++ tokenizer against Hugging Face `tokenizers`, single-threaded,
on the same text: the whole standard library of the running interpreter.

    python -m tandem.bench.tokenizer_speed                       # every family, whole stdlib
    python -m tandem.bench.tokenizer_speed --files 200 --repeats 1 --out /tmp/tok   # quick

Tokenizers: the tiny test-fixture pair's (`tiny`: byte-level BPE, 2048 tokens) and one per family trained here
with `tokenizers` (tandem.bench.tokenizer_families). Both sides run through their Python
bindings, one `encode(text)` call per file, Hugging Face with TOKENIZERS_PARALLELISM=false and
RAYON_NUM_THREADS=1 (a single `encode` is single-threaded anyway). Per tokenizer and system:
a first pass with a fresh tokenizer (cold word caches), then `--repeats` warm passes,
interleaved between the systems; MB/s = UTF-8 megabytes of text / seconds. The first pass
also checks that the ids are the same, file by file. Writes results.json, results.md and
speed.png into --out.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tandem.bench.machine import describe, loadavg, wait_for_idle  # noqa: E402
from tandem.bench.report import pyplot  # noqa: E402
from tandem.bench.tokenizer_families import FAMILIES, build_families, read_texts, stdlib_files  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# the tiny test-fixture pair's tokenizer (byte-level BPE, 2048 tokens, trained on the standard library)
TINY_TOKENIZER = REPO / "tests/fixtures/tiny/large/tokenizer.json"


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="pass", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dev dependency
        class Plain:
            def update(self, n: int) -> None:
                print(f"{desc}: one more pass", file=sys.stderr)

            def close(self) -> None:
                pass
        return Plain()


def _time(encode: Any, texts: list[str]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    ids = [encode(t) for t in texts]
    return time.perf_counter() - start, ids


def measure(name: str, path: Path, texts: list[str], megabytes: float, repeats: int, bar: Any) -> dict[str, Any]:
    from tokenizers import Tokenizer as HFTokenizer

    from tandem import Tokenizer

    hf = HFTokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    ours = Tokenizer(path)
    systems = {"hf": lambda t: hf.encode(t).ids, "tandem": ours.encode}
    first: dict[str, float] = {}
    ids: dict[str, list[list[int]]] = {}
    for system, encode in systems.items():
        first[system], ids[system] = _time(encode, texts)
        bar.update(1)
    same = sum(a == b for a, b in zip(ids["hf"], ids["tandem"], strict=True))
    tokens = sum(len(x) for x in ids["hf"])
    warm: dict[str, list[float]] = {s: [] for s in systems}
    for rep in range(repeats):
        order = list(systems) if rep % 2 == 0 else list(reversed(systems))
        for system in order:
            warm[system].append(_time(systems[system], texts)[0])
            bar.update(1)
    row: dict[str, Any] = {"tokenizer": name, "files": len(texts), "megabytes": round(megabytes, 3),
                           "tokens": tokens, "identical_files": same, "vocab_size": ours.vocab_size}
    for system in systems:
        row[f"{system}_first_s"] = round(first[system], 4)
        row[f"{system}_first_mb_s"] = round(megabytes / first[system], 3)
        if warm[system]:
            best = min(warm[system])
            row[f"{system}_warm_s"] = [round(x, 4) for x in warm[system]]
            row[f"{system}_warm_mb_s"] = round(megabytes / best, 3)
    row["ratio_first"] = round(first["hf"] / first["tandem"], 3)
    if repeats:
        row["ratio_warm"] = round(min(warm["hf"]) / min(warm["tandem"]), 3)
    return row


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Tokenizer encode speed: tandem (C++) vs Hugging Face tokenizers, single thread",
        "",
        f"Corpus: {results['corpus']['files']} files of the Python {m['python']} standard library, "
        f"{results['corpus']['megabytes']:.1f} MB of UTF-8. CPU: {m['cpu_model']} "
        f"({m['logical_cpus']} logical CPUs); tokenizers {m['versions'].get('tokenizers')}; "
        f"{results['when']}. Load average at start / end: {results['load_at_start'][0]:.2f} / "
        f"{results['load_at_end'][0]:.2f}.",
        "",
        "MB/s of text through `encode(text)` per file, both from Python. *first*: a fresh tokenizer "
        "(cold word caches); *warm*: best of the repeats. ratio = tandem MB/s ÷ Hugging Face MB/s, "
        "measured in the same run. *identical*: files whose ids are equal.",
        "",
        "| tokenizer | tokens | identical | HF first | tandem first | ratio | HF warm | tandem warm | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['tokenizer']} | {r['tokens']:,} | {r['identical_files']}/{r['files']} | {r['hf_first_mb_s']:.2f} | "
            f"{r['tandem_first_mb_s']:.2f} | {r['ratio_first']:.2f}× | {r.get('hf_warm_mb_s', float('nan')):.2f} | "
            f"{r.get('tandem_warm_mb_s', float('nan')):.2f} | {r.get('ratio_warm', float('nan')):.2f}× |")
    if results.get("idle", {}).get("warning"):
        lines += ["", f"**Warning:** {results['idle']['warning']}"]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.get("hf_warm_mb_s", r["hf_first_mb_s"]) for r in rows], 0.4, label="Hugging Face")
    ax.bar([x + 0.2 for x in xs], [r.get("tandem_warm_mb_s", r["tandem_first_mb_s"]) for r in rows], 0.4,
           label="tandem (C++)")
    ax.set_xticks(list(xs), [r["tokenizer"] for r in rows])
    ax.set_ylabel("encode MB/s (warm, 1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=120)
    plt.close(fig)
    return ["speed.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tandem.bench.tokenizer_speed", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: bench/results/<timestamp>-tokenizer)")
    parser.add_argument("--families", default="tiny," + ",".join(FAMILIES),
                        help="comma-separated: tiny (the test-fixture pair's, tests/fixtures/tiny) and trained families "
                             f"({', '.join(FAMILIES)}); default: all")
    parser.add_argument("--files", type=int, default=0, help="use the first N stdlib files (0: all)")
    parser.add_argument("--repeats", type=int, default=3, help="warm passes per system (default 3)")
    parser.add_argument("--max-load", type=float, default=0.5, help="wait for this 1-min load average first")
    parser.add_argument("--wait-idle", type=float, default=60.0, help="wait at most this many seconds for it")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = [n for n in names if n != "tiny" and n not in FAMILIES]
    if unknown or not names:
        parser.error(f"unknown families {unknown}: choose from tiny, {', '.join(FAMILIES)}")
    if args.repeats < 0 or args.files < 0:
        parser.error("--repeats and --files must be >= 0")
    out = args.out or REPO / "bench/results" / f"{datetime.now():%Y%m%d-%H%M%S}-tokenizer"
    out.mkdir(parents=True, exist_ok=True)

    files = stdlib_files()
    if args.files:
        files = files[:args.files]
    texts = read_texts(files)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"corpus: {len(texts)} files, {megabytes:.1f} MB", file=sys.stderr)
    paths: dict[str, Path] = {}
    trained = [n for n in names if n != "tiny"]
    scratch = tempfile.TemporaryDirectory(prefix="tandem-tokenizers-")
    if trained:
        print("training the families' tokenizers ...", file=sys.stderr)
        built = build_families(Path(scratch.name))
        paths.update({n: built[n] for n in trained})
    if "tiny" in names:
        paths = {"tiny": TINY_TOKENIZER, **paths}

    idle = wait_for_idle(args.max_load, args.wait_idle, log=lambda m: print(m, file=sys.stderr))
    start_load = loadavg()
    bar = _progress(len(paths) * 2 * (1 + args.repeats), "encode passes")
    rows = [measure(name, path, texts, megabytes, args.repeats, bar) for name, path in paths.items()]
    bar.close()
    scratch.cleanup()
    results = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": describe(threads=1),
        "corpus": {"source": "sysconfig.get_paths()['stdlib'] *.py", "files": len(texts),
                   "megabytes": round(megabytes, 3)},
        "idle": idle, "load_at_start": start_load, "load_at_end": loadavg(),
        "repeats": args.repeats, "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    written = ["results.json", "results.md", *plot(results, out)]
    print(markdown(results))
    print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)
    return 0 if all(r["identical_files"] == r["files"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
