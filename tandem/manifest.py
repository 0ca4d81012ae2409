"""The bundle manifest (`tandem.json`) as the exporter writes it: the writer's schema.

The exporter fills these dataclasses and `Manifest.save` writes them; every field is written.
The one reader is the C++ core (`cpp/include/tandem/manifest.hpp`): the runtime, and Python
through `tandem._core.read_manifest` / `TandemModel.manifest`, read bundles through it. It
requires every key it reads and has no defaults of its own, so the defaults below are the
only ones. tests/test_manifest_schema.py holds these fields against the reader's keys.

Layout of a bundle folder::

    tandem.json                    this manifest
    large.onnx(.data)              M_L, block mode                              (always)
    tandem_drafter.onnx(.data)     tandem drafter step graph (modes tandem, speed)  (optional)
    plain_drafter.onnx(.data)      plain drafter step graph (mode vanilla)          (optional)
    tokenizer.json                 Hugging Face `tokenizers` file        (optional for id-only use)
    chat_template.jinja            M_L's chat template (Jinja)           (optional: for `chat`)

KV cache of every graph: one buffer per layer and K/V, `[1, h_kv, S, dh]` of `kv_dtype`,
bound both as the past input and the present output (ONNX Runtime's GroupQueryAttention
shared buffer). A call with `n` new rows after `P` valid ones is told `seqlens_k = P + n - 1`
and `total_sequence_length = P + n`; it writes rows `P..P+n-1`. Rewinding is setting the
valid length. See docs/CONTRACTS.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "tandem-bundle"
# 3: graph roles tandem_drafter / plain_drafter (were small / draft), every key required.
# 4: a drafter's two router outputs, router_score_greedy and router_score_sampled (was one
#    router_score for both decoding modes).
# The C++ reader's kManifestFormatVersion must be the same (tested).
FORMAT_VERSION = 4
MANIFEST_NAME = "tandem.json"
GRAPH_ROLES = ("large", "tandem_drafter", "plain_drafter")
GRAPH_FILES = {role: f"{role}.onnx" for role in GRAPH_ROLES}

# The exporter's defaults (`tandem export`): the bundle's default γ when the tandem drafter's
# training does not say, the longest γ a request may ask for, and the default router τ (one for
# both routers: each score estimates the same quantity, the probability that M_L accepts the
# next draft under the request's verification, so one τ is one trade-off; docs/METHOD.md). Every
# bundle carries its values; the runtime reads them from the bundle and has none of its own.
DEFAULT_BLOCK_LENGTH = 4
DEFAULT_MAX_BLOCK_LENGTH = 16
DEFAULT_ROUTER_THRESHOLD = 0.0  # τ: an optional floor on the router's score; the cost rule decides
# the drafter folders' router layout: 2 = a greedy and a sampled router (1, no "layout" key: one
# router for both decoding modes, refused); read by the exporter without torch
ROUTER_LAYOUT = 2


@dataclass
class GraphSpec:
    """One ONNX graph of a bundle and its I/O names.

    Every role: inputs ``input_ids [1, t]`` int64, past K/V, ``seqlens_k [1]`` int32,
    ``total_sequence_length []`` int32 and ``logits_from [1]`` int64; outputs ``logits
    [1, t - logits_from, V]`` float32 and present K/V (the past buffers).
    role ``large``: also outputs ``reps`` (one per entry of ``rep_layers``, `[1, t, hidden_size]`
    float32).
    role ``tandem_drafter``: also inputs ``memory`` (one per entry of ``memory_layers``,
    `[1, m, memory_size]` float32, placed before the tokens); optional router outputs.
    role ``plain_drafter``: optional router outputs.
    Router outputs (drafters; both or neither): ``router_score_greedy`` and
    ``router_score_sampled``, ``[1, rows]`` float32 each, the two routers' scores for the logits
    rows (train/router.py); the runtime reads the greedy one when decoding greedily, the sampled
    one when sampling.
    """

    file: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_heads: int = 0
    input_ids: str = "input_ids"
    logits: str = "logits"
    seqlens_k: str = "seqlens_k"
    total_sequence_length: str = "total_sequence_length"
    logits_from: str = "logits_from"
    past_keys: list[str] = field(default_factory=list)
    past_values: list[str] = field(default_factory=list)
    present_keys: list[str] = field(default_factory=list)
    present_values: list[str] = field(default_factory=list)
    # large only: representation outputs, one per M_L layer index in rep_layers.
    rep_layers: list[int] = field(default_factory=list)
    reps: list[str] = field(default_factory=list)
    # tandem drafter only: memory inputs, one per M_L layer index in memory_layers.
    memory_layers: list[int] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)
    memory_size: int = 0
    router_score_greedy: str = ""  # "" (both): no routers
    router_score_sampled: str = ""
    kv_dtype: str = "float32"  # float32 | float16
    precision: str = "fp32"
    # Rows the graph writes into the KV buffers after a call's own rows, as scratch (the
    # buffers need that much room; the valid length does not include them). M_L's and the
    # plain drafter's graphs give their attention one zero row more than the call has, so
    # ONNX Runtime never takes GroupQueryAttention's one-row path, whose rounding differs:
    # a token's logits are bit for bit the same whatever the size of its block.
    kv_scratch_rows: int = 0
    # Drafters only: the token ids of the logits' columns, ascending (a reduced draft
    # vocabulary: the drafter proposes only these, and its distribution is 0 elsewhere, so
    # verification stays exact). Empty: the full vocabulary.
    draft_vocab: list[int] = field(default_factory=list)
    # Drafters only: the block length γ the drafter was trained at (0: unknown). Decoding
    # with a longer γ than trained drafts positions it never learned (a warning says so).
    trained_block_length: int = 0

    @property
    def logits_size(self) -> int:
        return len(self.draft_vocab) or self.vocab_size

    @staticmethod
    def for_layers(
        file: str,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        hidden_size: int,
        vocab_size: int,
        **extra: Any,
    ) -> GraphSpec:
        """Spec with the conventional names `past.{i}.key` / `present.{i}.key`."""
        return GraphSpec(
            file=file,
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            past_keys=[f"past.{i}.key" for i in range(num_layers)],
            past_values=[f"past.{i}.value" for i in range(num_layers)],
            present_keys=[f"present.{i}.key" for i in range(num_layers)],
            present_values=[f"present.{i}.value" for i in range(num_layers)],
            **extra,
        )


@dataclass
class Manifest:
    graphs: dict[str, GraphSpec]
    vocab_size: int
    context_length: int
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    tokenizer: str = ""
    # M_L's chat template: a file name in the bundle ("" when there is none; `chat` refuses),
    # and the named special tokens templates read (bos_token, eos_token, ...: strings).
    chat_template: str = ""
    special_tokens: dict[str, str] = field(default_factory=dict)
    default_block_length: int = DEFAULT_BLOCK_LENGTH
    max_block_length: int = DEFAULT_MAX_BLOCK_LENGTH
    router_threshold: float = DEFAULT_ROUTER_THRESHOLD
    precision: str = "fp32"
    build: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["graphs"] = {role: asdict(spec) for role, spec in self.graphs.items()}
        return data

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path
