#!/usr/bin/env python
"""M_L as an int8/int4 bundle computes it, as a Hugging Face folder.

An int4 bundle's M_L is not the model it was exported from: every linear layer becomes
MatMulNBits over block-quantized weights, and with tied embeddings the token table is the
head's quantized weights too (see docs/GRAPHS.md). This script writes the folder whose float32
weights are exactly those the graph computes with (`tandem.export.quantize.stored_weight`:
the same deterministic quantizer, dequantized), so PyTorch code (`tandem eval`, `tandem train
--large`) can score drafters against the M_L that decoding verifies with. Norms, rotary and
everything else are unchanged; the graph's int8 activations (accuracy_level 4) are the one
difference left.

On SmolLM2-135M-Instruct the difference matters: on M_L's own greedy answers, the int4 graph's
argmax equals the next token at ~69 % of answer positions, the float32 graph's at ~90 %.

    .venv/bin/python scripts/quantized_reference.py --large build/smollm2 --precision int4 \\
        --out build/smollm2-int4
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tandem.export.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", type=Path, required=True, help="M_L: Hugging Face folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--precision", choices=("int8", "int4"), default="int4")
    p.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=DEFAULT_BLOCK_SIZE,
                   help="weights per quantization block, as the bundle was exported with (default: 32)")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from tandem.export.quantize import stored_weight

    if not (args.large / "config.json").is_file():
        print(f"error: {args.large} is not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(args.large, dtype=torch.float32).eval()
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        for module in tqdm(linears, desc=f"{args.precision} weights", unit="linear"):
            module.weight.copy_(torch.from_numpy(stored_weight(module.weight.numpy(), args.precision, args.block_size)))
        # the head is quantized; with tied embeddings the graph's token table is that same tensor
        head.weight.copy_(torch.from_numpy(stored_weight(head.weight.numpy(), args.precision, args.block_size)))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for f in args.large.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy2(f, args.out / f.name)
    print(f"wrote {args.out}: {len(linears)} linear layers and the head ({'tied with' if tied else 'not'} the "
          f"embedding) as {args.precision} in blocks of {args.block_size} stores them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
