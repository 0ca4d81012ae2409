"""Disk and memory of a bundle whose tandem drafter shares M_L's embedding and LM head.

Exports M_L (a Hugging Face folder, e.g. build/realsize/models/qwen2-1.5b) with a 1-layer
tandem M_S at M_L's width built by `create_tandem` (it copies M_L's embedding and head), then
loads the bundle in fresh processes through the C++ core, with the shared tensors loaded once
(`share_weights=True`: one mapping, shared initializers, one prepacked-weights container) and
without, and M_L alone; each process reports VmRSS after loading and VmHWM (peak) after a
short greedy `speed` run, which must equal `large`.

    .venv/bin/python scripts/shared_head_rss.py build/realsize/models/qwen2-0.5b --precision int4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from tandem import _core

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out

model = _core.Model(sys.argv[1], threads=2, share_weights=sys.argv[2] == "1")
loaded = status()
if model.has_tandem_drafter:
    prompt = list(range(100, 132))
    speed = _core.Generator(model, prompt, _core.GenerateOptions(mode="speed", block_length=4, max_new_tokens=16,
                                                                 ignore_eos=True)).run()
    large = _core.Generator(model, prompt, _core.GenerateOptions(mode="large", max_new_tokens=16, ignore_eos=True)).run()
    assert speed == large, (speed, large)
print(json.dumps({"shared_mib": model.shared_weight_bytes / 2**20, "loaded": loaded, "end": status()}))
"""


def measure(bundle: Path, share: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(bundle), "1" if share else "0"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def large_only(bundle: Path, folder: Path) -> Path:
    """The bundle without its drafter (hard links: no copy)."""
    folder.mkdir()
    for name in ("large.onnx", "large.onnx.data"):
        os.link(bundle / name, folder / name)
    manifest = json.loads((bundle / "tandem.json").read_text())
    manifest["graphs"] = {"large": manifest["graphs"]["large"]}
    manifest["tokenizer"] = ""
    (folder / "tandem.json").write_text(json.dumps(manifest))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("large", type=Path, help="M_L: a Hugging Face folder")
    parser.add_argument("--precision", default="int4", choices=["fp32", "fp16", "int8", "int4"])
    parser.add_argument("--validate", action="store_true", help="validate the graphs in ONNX Runtime (slower)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()

    import onnx

    from tandem.export.bundle import export_bundle
    from tandem.train.model import LargeParts, create_drafter_config, create_tandem

    work = Path(tempfile.mkdtemp(prefix="shared-head-", dir=args.work))
    try:
        parts = LargeParts.from_folder(args.large)
        config = create_drafter_config(parts.config, num_layers=1, hidden_size=parts.config.hidden_size)
        tandem = create_tandem(parts, config, seed=0)
        del parts
        bundle = work / "bundle"
        export_bundle(args.large, bundle, tandem=tandem, precision=args.precision, validate=args.validate,
                      context_length=512, progress=None)
        del tandem
        small = (bundle / "tandem_drafter.onnx.data").stat().st_size

        model = onnx.load(str(bundle / "tandem_drafter.onnx"), load_external_data=False)
        refs = [{x.key: x.value for x in t.external_data} for t in model.graph.initializer if t.external_data]
        saved = sum(length for _, length in {(e["offset"], int(e["length"])) for e in refs
                                             if e["location"] == "large.onnx.data"})
        rows = {"M_L alone": measure(large_only(bundle, work / "large-only"), True),
                "M_L + M_S, shared": measure(bundle, True),
                "M_L + M_S, not shared": measure(bundle, False)}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.large.name} {args.precision}: tandem_drafter.onnx.data {small / 1e6:.1f} MB; "
          f"{saved / 1e6:.1f} MB read from large.onnx.data instead of stored twice")
    print("| load | shared MiB | VmRSS after load MiB | peak VmHWM MiB |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['shared_mib']:.0f} | {r['loaded']['VmRSS']:.0f} | {r['end']['VmHWM']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
