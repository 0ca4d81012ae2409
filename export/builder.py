"""The graph builder: large.onnx, tandem_drafter.onnx and plain_drafter.onnx, straight from the weights.

Every graph has the shape of ONNX Runtime's fastest decoder path (docs/GRAPHS.md):

    ids → Gather(embedding)
    per layer:  [Skip]SimplifiedLayerNormalization → fused QKV MatMul(NBits) (+ bias)
                → GroupQueryAttention (rotary inside; K/V in one shared past/present buffer)
                → o_proj → SkipSimplifiedLayerNormalization → fused gate/up MatMul(NBits)
                → Split → x·sigmoid(x)·up → down_proj
    SkipSimplifiedLayerNormalization(final norm) → Slice(logits_from) → lm_head

Inputs: `input_ids [1, t]` int64; `seqlens_k [1]` int32 (= valid length after the call
- 1); `total_sequence_length []` int32 (= valid length after the call); `logits_from [1]`
int64 (logits are computed for token rows `logits_from..t-1`); past K/V `[1, h_kv, S, dh]`
for every layer, where `S` is the buffer length (the caller binds the same buffer as the
present output; GroupQueryAttention writes the new rows at `total - n .. total - 1`).

- **large** (M_L) also outputs the representations `x^(l)` for the manifest's layers:
  `l = 0` the embedding output, `0 < l < L` the residual stream after layer `l`, `l = L` the
  final norm's output (Hugging Face's `hidden_states` convention).
- **tandem_drafter** (tandem M_S) takes `memory.{l} [1, m, d_L]` for the M_L layers it reads. In
  layer `j` the rows `W_T^(j) x^(ℓ(j))` go before the token rows into the input norm and the
  K/V projections, so GroupQueryAttention appends the memory K/V and then the token K/V to
  the same cache (positions `P..P+m-1`, then `P+m..P+m+t-1`); only the token rows go on
  through o_proj and the MLP.
- **plain_drafter** (plain M_S) is the same decoder without memory.
Both drafters may output the adaptive block-length routers' scores, `router_score_greedy` and
`router_score_sampled` (`[1, rows]` each; both or neither).
Both may have a reduced draft vocabulary (`draft_vocab`): their logits are then those tokens' columns.

Weights are read one tensor at a time from a `Checkpoint` and written to the graph's
external data file at once, so peak memory stays near the largest tensor (the embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto

from tandem.errors import ExportError
from tandem.export.checkpoint import Checkpoint
from tandem.export.decoder import (
    EMBED,
    FINAL_NORM,
    GATE_UP,
    QKV,
    DecoderShape,
    layer_name,
    lm_head_name,
    rope_tables,
)
from tandem.export.graph_writer import MS_DOMAIN, GraphWriter, SharedData
from tandem.export.quantize import DEFAULT_BLOCK_SIZE, NBITS, activation_dtype, quantize_blocks
from tandem.manifest import GraphSpec

INT64_MAX = np.iinfo(np.int64).max
HEAD_ROWS = 8192  # vocabulary rows of the LM head quantized at a time
HEAD_COLUMNS = 256  # LM head columns transposed at a time (float graphs)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    accuracy_level: int = 4
    context_length: int = 2048
    block_size: int = DEFAULT_BLOCK_SIZE  # int8/int4: weights per quantization block along K


def linear_weight(ckpt: Checkpoint, parts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The weight of the Hugging Face linears `parts` fused along their outputs (`[N, K]`,
    Hugging Face's layout), and their fused bias (zeros for parts without one), or None when
    none has a bias."""
    names = ckpt.tensors.names()
    weights = [ckpt.tensors.get(f"{p}.weight") for p in parts]
    if len(weights) == 1:
        weight = weights[0]
    else:
        from tandem.export.quantize import optional_torch

        torch = optional_torch()
        weight = (torch.cat([torch.from_numpy(w) for w in weights]).numpy() if torch is not None
                  else np.concatenate(weights))
    if not any(f"{p}.bias" in names for p in parts):
        return weight, None
    bias = np.concatenate([ckpt.tensors.get(f"{p}.bias") if f"{p}.bias" in names
                           else np.zeros(w.shape[0], np.float32) for p, w in zip(parts, weights, strict=True)])
    return weight, bias


def _transposed(weight: np.ndarray) -> np.ndarray:
    """weight.T as a contiguous array (torch's transposing copy is parallel and blocked; the
    same bytes from numpy without torch)."""
    from tandem.export.quantize import optional_torch

    torch = optional_torch()
    if torch is None:
        return np.ascontiguousarray(weight.T)
    return torch.from_numpy(weight).T.contiguous().numpy()


class _Graph:
    """Helpers over a GraphWriter for one decoder at one precision."""

    def __init__(self, w: GraphWriter, shape: DecoderShape, options: BuildOptions) -> None:
        self.w, self.shape, self.options = w, shape, options
        self.act = activation_dtype(options.precision)
        self.np_act = np.float16 if self.act == "float16" else np.float32

    def param(self, name: str, array: np.ndarray) -> str:
        return self.w.weight(name, np.ascontiguousarray(array, dtype=self.np_act))

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ weight.T (+ bias); weight `[N, K]` float32 (Hugging Face's layout)."""
        if self.options.precision in NBITS:
            packed, scales = quantize_blocks(weight, NBITS[self.options.precision], self.options.block_size)
            return self.nbits(x, self.w.weight(f"{name}.qweight", packed), self.w.weight(f"{name}.scales", scales),
                               weight.shape, bias, name)
        y = self.w.op("MatMul", [x, self.param(f"{name}.weight", _transposed(weight))], name=name)
        if bias is not None:
            y = self.w.op("Add", [y, self.param(f"{name}.bias", bias)], name=f"{name}.bias_add")
        return y

    def nbits(self, x: str, qweight: str, scales: str, shape: tuple[int, ...], bias: np.ndarray | None,
               name: str) -> str:
        n, k = shape
        inputs = [x, qweight, scales]
        if bias is not None:
            inputs += ["", "", self.w.weight(f"{name}.bias", bias.astype(np.float32))]
        attrs = dict(K=k, N=n, bits=NBITS[self.options.precision], block_size=self.options.block_size)
        if self.options.accuracy_level:
            attrs["accuracy_level"] = self.options.accuracy_level
        return self.w.op("MatMulNBits", inputs, name=name, domain=MS_DOMAIN, **attrs)

    def quantized_head(self, weight: np.ndarray, name: str = "lm_head") -> tuple[str, str]:
        """The MatMulNBits weights (packed, scales) of the vocabulary-sized head, quantized and
        written in row slices so that no second copy of it exists in memory."""
        n, k = weight.shape
        bits = NBITS[self.options.precision]
        scales: list[np.ndarray] = []

        def packed() -> Iterator[np.ndarray]:
            for row in range(0, n, HEAD_ROWS):
                p, s = quantize_blocks(weight[row:row + HEAD_ROWS], bits, self.options.block_size)
                scales.append(s)
                yield p

        size = self.options.block_size
        blocks = -(-k // size)
        qweight = self.w.stream(f"{name}.qweight", np.uint8, (n, blocks, size * bits // 8), packed())
        return qweight, self.w.weight(f"{name}.scales", np.concatenate(scales))

    def float_head(self, weight: np.ndarray, name: str = "lm_head") -> str:
        """The MatMul weight `[K, V]` of the head, transposed and written in column slices."""
        n, k = weight.shape
        columns = (_transposed(weight[:, c:c + HEAD_COLUMNS]) for c in range(0, k, HEAD_COLUMNS))  # rows of weight.T
        return self.w.stream(f"{name}.weight", self.np_act, (k, n), columns)

    def norm(self, x: str, weight: str, name: str) -> str:
        return self.w.op("SimplifiedLayerNormalization", [x, weight], name=name, axis=-1,
                         epsilon=self.shape.rms_eps, stash_type=1)

    def skip_norm(self, x: str, skip: str, weight: str, name: str) -> tuple[str, str]:
        """(norm(x + skip), x + skip)"""
        out, total = f"{name}/out", f"{name}/sum"
        self.w.op("SkipSimplifiedLayerNormalization", [x, skip, weight], outputs=[out, "", "", total],
                  name=name, domain=MS_DOMAIN, epsilon=self.shape.rms_eps)
        return out, total

    def to_float(self, x: str, name: str) -> str:
        return x if self.act == "float32" else self.w.op("Cast", [x], name=name, to=1)


def _spec(ckpt: Checkpoint, role: str, path: Path, options: BuildOptions, rep_layers: list[int] | None,
          shape: DecoderShape) -> GraphSpec:
    """The manifest entry of the graph `role` (I/O names, dims, memory and representation layers)."""
    tandem = ckpt.tandem_config if role == "tandem_drafter" else None
    if role == "tandem_drafter" and tandem is None:
        raise ExportError("the tandem M_S has no tandem_config.json: train it with `tandem train --mode tandem`")
    router = ckpt.router_config if role in ("tandem_drafter", "plain_drafter") else None
    spec = GraphSpec.for_layers(
        path.name, num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
        hidden_size=shape.hidden_size, vocab_size=shape.vocab_size, num_heads=shape.num_heads,
        precision=options.precision, kv_dtype=activation_dtype(options.precision),
        router_score_greedy="router_score_greedy" if router else "",
        router_score_sampled="router_score_sampled" if router else "",
        kv_scratch_rows=1 if role in ("large", "plain_drafter") else 0,
    )
    if role == "large":
        spec.rep_layers = list(rep_layers or [])
        spec.reps = [f"rep.{layer}" for layer in spec.rep_layers]
        if any(not 0 <= layer <= shape.num_layers for layer in spec.rep_layers):
            raise ExportError(f"representation layers {spec.rep_layers} outside 0..{shape.num_layers}")
    if role != "large":  # a reduced draft vocabulary (tandem config, or a plain drafter's draft_vocab.json)
        spec.draft_vocab = list(ckpt.draft_vocab)
    if tandem is not None:
        spec.memory_layers = list(tandem["large_layers"])
        spec.memory = [f"memory.{layer}" for layer in spec.memory_layers]
        spec.memory_size = int(tandem["large_hidden_size"])
        if len(tandem["layer_map"]) != shape.num_layers:
            raise ExportError(f"the tandem config maps {len(tandem['layer_map'])} M_S layers but M_S has "
                              f"{shape.num_layers}; re-save the tandem M_S")
    return spec


def build_graph(
    ckpt: Checkpoint,
    role: str,
    path: Path,
    options: BuildOptions,
    *,
    rep_layers: list[int] | None = None,
    on_layer: Callable[[], None] | None = None,
    shared: SharedData | None = None,
) -> tuple[GraphSpec, str]:
    """Write the `role` graph (large, tandem_drafter or plain_drafter) of `ckpt` to `path` (+ .data).

    `rep_layers` (large): the M_L layers whose representations are outputs. The tandem
    drafter's memory layers come from `ckpt.tandem_config`. `on_layer` is called once per
    decoder layer built (progress). `shared`: the bundle's index of tensors already written
    (a tensor equal to one in another graph's data file is not written again, but read from
    there). Returns the graph's manifest entry and the sha256 of its own data file.
    """
    shape = DecoderShape.of(ckpt.config, "M_L" if role == "large" else "M_S")
    spec = _spec(ckpt, role, path, options, rep_layers, shape)
    with GraphWriter(path, role, shared) as w:
        decoder = _Decoder(w, ckpt, spec, shape, options)
        for i in range(shape.num_layers):
            decoder.layer(i)
            if on_layer is not None:
                on_layer()
        decoder.outputs(decoder.head())
        w.save()
    return spec, w.data_sha256


class _Decoder(_Graph):
    """One decoder graph under construction. Between layers: `residual` is the residual
    stream of the token rows and `pending` the last MLP output not yet added to it (the next
    norm adds it: SkipSimplifiedLayerNormalization); `reps` the representation outputs."""

    def __init__(self, w: GraphWriter, ckpt: Checkpoint, spec: GraphSpec, shape: DecoderShape,
                 options: BuildOptions) -> None:
        super().__init__(w, shape, options)
        self.ckpt, self.spec = ckpt, spec
        self.tandem = ckpt.tandem_config if spec.memory else None
        act = self.act
        self.ids = w.input(spec.input_ids, "int64", [1, "tokens"])
        memory = [w.input(name, "float32", [1, "memory_rows", spec.memory_size]) for name in spec.memory]
        for k, v in zip(spec.past_keys, spec.past_values, strict=True):
            w.input(k, act, [1, shape.num_kv_heads, "buffer_length", shape.head_dim])
            w.input(v, act, [1, shape.num_kv_heads, "buffer_length", shape.head_dim])
        self.seqlens_k = w.input(spec.seqlens_k, "int32", [1])
        self.total = w.input(spec.total_sequence_length, "int32", [])
        self.logits_from = w.input(spec.logits_from, "int64", [1])
        if spec.kv_scratch_rows:
            # The attention gets one zero row after the call's rows (sliced off its output,
            # its K/V written past the valid length): GroupQueryAttention then never runs its
            # one-row path, whose rounding differs, so a one-token step computes bit for bit
            # what a verification block computes for the same position (M_L; and a plain
            # drafter that is M_L itself proposes exactly what M_L accepts).
            self.seqlens_k = w.op("Add", [self.seqlens_k, w.const("attn.one", [1], np.int32)], name="attn.seqlens_k")
            self.total = w.op("Add", [self.total, w.const("attn.one_scalar", np.int32(1), np.int32)],
                              name="attn.total")
            self.pad_row = w.const("attn.pad_row", [0, 0, 0, 0, 1, 0])
        cos, sin = rope_tables(ckpt.config, options.context_length + spec.kv_scratch_rows)
        self.cos, self.sin = self.param("rope.cos", cos), self.param("rope.sin", sin)

        # Tied embeddings in an int8/int4 graph share the LM head's quantized weights (read
        # by GatherBlockQuantized); otherwise the table is a Gather over float weights. The
        # packed weights [V, blocks, B·bits/8] are read as stored, one block per row of the
        # last axis, with the head's scales seen as [V, blocks, 1] (an initializer over the same
        # bytes): a Reshape of the weights would be constant-folded into a copy per session.
        self.head_name = lm_head_name(shape, ckpt.tensors.names())
        self.head_q: tuple[str, str] | None = None
        if options.precision in NBITS and self.head_name == EMBED:
            self.head_q = self.quantized_head(ckpt.tensors.get(EMBED))
            self.table = self.head_q[0]
            blocks = -(-shape.hidden_size // options.block_size)
            self.table_scales = w.alias("embed.scales", self.head_q[1], (shape.vocab_size, blocks, 1))
        else:
            self.table = self.param("embed_tokens", ckpt.tensors.get(EMBED))
        self.residual: str = self.embed_rows(self.ids, "embed")  # [1, t, d]
        self.pending: str | None = None
        self.reps: dict[int, str] = {0: self.residual} if 0 in spec.rep_layers else {}

        self.memory, self.memory_rows = memory, None
        if memory:
            if act == "float16":
                self.memory = [w.op("Cast", [m], name=f"{m}.cast", to=TensorProto.FLOAT16) for m in memory]
            self.memory_rows = w.op("Shape", [self.memory[0]], name="memory_rows", start=1, end=2)  # [1] = m

    def embed_rows(self, rows: str, name: str, rank: int = 2) -> str:
        """Embedding rows of the token ids `rows` (a tensor of `rank` dims)."""
        w = self.w
        if self.head_q is None:
            return w.op("Gather", [self.table, rows], name=name, axis=0)
        out = w.op("GatherBlockQuantized", [self.table, rows, self.table_scales], name=name, domain=MS_DOMAIN,
                   bits=NBITS[self.options.precision], block_size=self.options.block_size, gather_axis=0,
                   quantize_axis=2)
        # [..., blocks, B] -> [..., blocks·B]
        out = w.op("Reshape", [out, w.const(f"{name}.row_shape", [0] * rank + [-1])], name=f"{name}.rows")
        if self.shape.hidden_size % self.options.block_size:  # rows are padded to whole blocks
            out = w.op("Slice", [out, w.const(f"{name}.start", [0]), w.const(f"{name}.end", [self.shape.hidden_size]),
                                 w.const(f"{name}.axis", [-1])], name=f"{name}.unpad")
        return out

    def layer(self, i: int) -> None:
        """Decoder layer `i`: input norm, attention, post-attention norm, MLP."""
        w, ckpt, name = self.w, self.ckpt, f"layers.{i}"
        ln_in = self.param(f"{name}.input_layernorm", ckpt.tensors.get(layer_name(i, "input_layernorm.weight")))
        if self.tandem is not None:  # memory rows W_T x^(ℓ) before the token rows
            if self.pending is not None:
                self.residual = w.op("Add", [self.residual, self.pending], name=f"{name}.residual")
            mem = self.memory[self.spec.memory_layers.index(self.tandem["layer_map"][i])]
            proj = ckpt.extras.get(f"projections.{i}.weight")  # [d_S, d_L]
            mem = self.linear(mem, proj, None, f"{name}.tandem_projection")
            stream = w.op("Concat", [mem, self.residual], name=f"{name}.memory_then_tokens", axis=1)
            h = self.norm(stream, ln_in, f"{name}.input_norm")
        elif self.pending is None:
            h = self.norm(self.residual, ln_in, f"{name}.input_norm")
        else:
            h, self.residual = self.skip_norm(self.pending, self.residual, ln_in, f"{name}.input_norm")
        if i in self.spec.rep_layers and i > 0:
            self.reps[i] = self.residual

        o_w, o_b = linear_weight(ckpt, [layer_name(i, "self_attn.o_proj")])
        o = self.linear(self._attention(i, h), o_w, o_b, f"{name}.attn.o_proj")
        ln_post = self.param(f"{name}.post_attention_layernorm",
                             ckpt.tensors.get(layer_name(i, "post_attention_layernorm.weight")))
        h, self.residual = self.skip_norm(o, self.residual, ln_post, f"{name}.post_attention_norm")
        self.pending = self._mlp(i, h)

    def _attention(self, i: int, h: str) -> str:
        """Fused QKV projection and GroupQueryAttention over the shared KV buffer; the token
        rows of its output."""
        w, spec, shape, name = self.w, self.spec, self.shape, f"layers.{i}"
        qkv_w, qkv_b = linear_weight(self.ckpt, [layer_name(i, p) for p in QKV])
        qkv = self.linear(h, qkv_w, qkv_b, f"{name}.attn.qkv")
        del qkv_w
        if spec.kv_scratch_rows:
            qkv = w.op("Pad", [qkv, self.pad_row], name=f"{name}.attn.pad_row")
        attn = w.op(
            "GroupQueryAttention",
            [qkv, "", "", spec.past_keys[i], spec.past_values[i], self.seqlens_k, self.total, self.cos, self.sin],
            outputs=[f"{name}.attn/out", spec.present_keys[i], spec.present_values[i]],
            name=f"{name}.attn", domain=MS_DOMAIN, num_heads=shape.num_heads,
            kv_num_heads=shape.num_kv_heads, scale=shape.scale, do_rotary=1, rotary_interleaved=0,
            local_window_size=shape.windows[i] or -1,
        )[0]
        if self.memory_rows is not None:  # only the token rows go on
            attn = w.op("Slice", [attn, self.memory_rows, w.const(f"{name}.slice_end", [INT64_MAX]),
                                  w.const(f"{name}.slice_axis", [1])], name=f"{name}.token_rows")
        if spec.kv_scratch_rows:  # drop the pad row
            attn = w.op("Slice", [attn, w.const(f"{name}.slice_start", [0]), w.const(f"{name}.slice_end", [-1]),
                                  w.const(f"{name}.slice_axis", [1])], name=f"{name}.call_rows")
        return attn

    def _mlp(self, i: int, h: str) -> str:
        """down(silu(gate(h)) * up(h)), gate and up fused into one matmul."""
        w, name = self.w, f"layers.{i}"
        gu_w, gu_b = linear_weight(self.ckpt, [layer_name(i, p) for p in GATE_UP])
        gate_up = self.linear(h, gu_w, gu_b, f"{name}.mlp.gate_up")
        del gu_w
        gate, up = w.op("Split", [gate_up], outputs=2, name=f"{name}.mlp.split", axis=-1, num_outputs=2)
        silu = w.op("Mul", [gate, w.op("Sigmoid", [gate], name=f"{name}.mlp.sigmoid")], name=f"{name}.mlp.silu")
        gated = w.op("Mul", [silu, up], name=f"{name}.mlp.gated")
        down_w, down_b = linear_weight(self.ckpt, [layer_name(i, "mlp.down_proj")])
        return self.linear(gated, down_w, down_b, f"{name}.mlp.down_proj")

    def head(self) -> str:
        """Final norm, the rows `logits_from..` and the LM head: float32 logits."""
        w, shape = self.w, self.shape
        final = self.param("norm", self.ckpt.tensors.get(FINAL_NORM))
        hidden, _ = self.skip_norm(self.pending, self.residual, final, "final_norm")
        if shape.num_layers in self.spec.rep_layers:
            self.reps[shape.num_layers] = hidden
        hidden = w.op("Slice", [hidden, self.logits_from, w.const("logits.slice_end", [INT64_MAX]),
                                w.const("logits.slice_axis", [1])], name="logits_rows")
        vocab = self.spec.draft_vocab
        if self.head_q is not None and not vocab:
            logits = self.nbits(hidden, *self.head_q, (shape.vocab_size, shape.hidden_size), None, "lm_head")
        else:
            head = self.ckpt.tensors.get(self.head_name)
            name = "lm_head"
            if vocab:  # a reduced draft vocabulary: the head's rows of those tokens only
                head, name = head[np.asarray(vocab)], "draft_head"
            if self.options.precision in NBITS:
                logits = self.nbits(hidden, *self.quantized_head(head, name), head.shape, None, name)
            else:
                logits = w.op("MatMul", [hidden, self.float_head(head, name)], name=name)
            del head
        return self.to_float(logits, "logits.cast")

    def outputs(self, logits: str) -> None:
        """Declare the graph's outputs: logits, present K/V, representations, router scores."""
        w, spec, shape = self.w, self.spec, self.shape
        w.output(logits, spec.logits, "float32", [1, "logit_rows", spec.logits_size])
        kv_shape: list[int | str] = [1, shape.num_kv_heads, "buffer_length", shape.head_dim]
        for k, v in zip(spec.present_keys, spec.present_values, strict=True):
            w.output(k, k, self.act, kv_shape)
            w.output(v, v, self.act, kv_shape)
        for layer, name in zip(spec.rep_layers, spec.reps, strict=True):
            w.output(self.to_float(self.reps[layer], f"{name}.cast"), name, "float32", [1, "tokens", shape.hidden_size])
        if spec.router_score_greedy:
            greedy, sampled = _router(w, self.ckpt, logits, self.embed_rows, self, spec.draft_vocab)
            w.output(greedy, spec.router_score_greedy, "float32", [1, "logit_rows"])
            w.output(sampled, spec.router_score_sampled, "float32", [1, "logit_rows"])


def _router(w: GraphWriter, ckpt: Checkpoint, logits: str, embed_rows: Callable[[str, str, int], str], g: _Graph,
            draft_vocab: list[int]) -> tuple[str, str]:
    """`tandem.train.router.Router` over float32 logits `[1, r, V]` -> the greedy and the sampled
    scores `[1, r]` each: sigmoid(MLP_kind([entropy, top-k probs, top-k embeddings averaged by
    probability])), the features computed once. With a draft vocabulary the logits' columns are
    its tokens: top-k columns map to token ids."""
    k = int(ckpt.router_config["top_k"])
    logp = w.op("LogSoftmax", [logits], name="router.log_softmax", axis=-1)
    probs = w.op("Exp", [logp], name="router.probs")
    axis_last = w.const("router.axis_last", [-1])
    entropy = w.op("Neg", [w.op("ReduceSum", [w.op("Mul", [probs, logp], name="router.plogp"), axis_last],
                                name="router.sum_plogp", keepdims=1)], name="router.entropy")  # [1, r, 1]
    top_logp, top_ids = w.op("TopK", [logp, w.const("router.k", [k])], outputs=2, name="router.topk", axis=-1)
    top_p = w.op("Exp", [top_logp], name="router.top_p")  # [1, r, k]
    if draft_vocab:
        top_ids = w.op("Gather", [w.const("router.draft_vocab", draft_vocab), top_ids], name="router.token_ids", axis=0)
    weights = w.op("Div", [top_p, w.op("ReduceSum", [top_p, axis_last], name="router.top_mass", keepdims=1)],
                   name="router.weights")
    top_emb = g.to_float(embed_rows(top_ids, "router.top_embeddings", 3), "router.top_embeddings.cast")  # [1, r, k, d]
    weighted = w.op("Mul", [w.op("Unsqueeze", [weights, axis_last], name="router.weights_col"), top_emb],
                    name="router.weighted")
    mean = w.op("ReduceSum", [weighted, w.const("router.axis_k", [-2])], name="router.mean_embedding", keepdims=0)
    features = w.op("Concat", [entropy, top_p, mean], name="router.features", axis=-1)
    extras = ckpt.extras

    def head(kind: str) -> str:
        p = f"router.{kind}"
        hidden = w.op("Add", [w.op("MatMul", [features, w.weight(f"{p}.w1", extras.get(f"{p}.0.weight").T.copy())],
                                   name=f"{p}.fc1"), w.weight(f"{p}.b1", extras.get(f"{p}.0.bias"))],
                      name=f"{p}.fc1_bias")
        hidden = w.op("Gelu", [hidden], name=f"{p}.gelu")
        out = w.op("Add", [w.op("MatMul", [hidden, w.weight(f"{p}.w2", extras.get(f"{p}.2.weight").T.copy())],
                                name=f"{p}.fc2"), w.weight(f"{p}.b2", extras.get(f"{p}.2.bias"))],
                   name=f"{p}.fc2_bias")
        return w.op("Squeeze", [w.op("Sigmoid", [out], name=f"{p}.sigmoid"), axis_last], name=f"{p}.score")

    return head("greedy"), head("sampled")
