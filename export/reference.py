"""The validation reference: the builder's graphs computed in float32 PyTorch, streamed.

It runs the same decoder as `tandem.export.builder` (same inputs, same outputs) from the
same `Checkpoint`, holding one layer's weights at a time, for a handful of short validation
cases. It can compute with the weights as given (float32: the model) and, in the same pass,
with the weights as a graph at another precision stores them (`stored_weight`): the
second tells graph arithmetic apart from the precision's loss.

tests/ check it against Hugging Face (`tandem.train.model.large_step`, `TandemSmall.step`,
`plain_step`) on tiny models of every supported family.
"""

from __future__ import annotations

import numpy as np
import torch

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
from tandem.export.feeds import CaseInputs
from tandem.export.quantize import DEFAULT_BLOCK_SIZE, NBITS, stored_weight
from tandem.train.router import ROUTER_KINDS

HEAD_ROWS = 8192  # vocabulary rows of the LM head converted at a time


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `[n, heads, dh]`, cos/sin `[n, dh/2]`: Hugging Face's rotate-half RoPE."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Reference:
    """`run(role, cases)` -> per case and per weight variant, the outputs of the graph `role`
    by manifest name: `logits`, `present.{i}.key|value` (past + new rows), `rep.{l}`,
    `router_score_greedy`, `router_score_sampled`.

    `variants` names the weight variants: "fp32" (as stored in the checkpoint) and/or a
    graph precision (int4, int8, fp16: the weights that graph computes with; int8/int4
    quantized in blocks of `block_size`, as the graph's).
    """

    def __init__(self, ckpt: Checkpoint, variants: tuple[str, ...] = ("fp32",), *, context_length: int,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.ckpt = ckpt
        self.variants = variants
        self.block_size = block_size
        self.shape = DecoderShape.of(ckpt.config)
        cos, sin = rope_tables(ckpt.config, context_length)
        self.cos, self.sin = torch.from_numpy(cos), torch.from_numpy(sin)

    def _linear(self, parts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per variant, the fused `[N, K]` weight and bias of `parts` (as the builder fuses)."""
        from tandem.export.builder import linear_weight

        weight, bias = linear_weight(self.ckpt, parts)
        b = None if bias is None else torch.from_numpy(bias)
        return {v: (torch.from_numpy(stored_weight(weight, v, self.block_size)), b) for v in self.variants}

    def _vector(self, name: str) -> dict[str, torch.Tensor]:
        """Norm weights: stored in the activation dtype (fp16 graphs round them)."""
        value = self.ckpt.tensors.get(name)
        return {v: torch.from_numpy(value.astype(np.float16).astype(np.float32) if v == "fp16" else value)
                for v in self.variants}

    @torch.no_grad()
    def run(self, role: str, cases: list[CaseInputs], rep_layers: list[int] | None = None) -> list[dict[str, dict[str, np.ndarray]]]:
        """Outputs `[case][variant][name]`."""
        shape, ckpt = self.shape, self.ckpt
        tandem = ckpt.tandem_config if role == "tandem_drafter" else None
        rep_layers = list(rep_layers or [])
        embed = ckpt.tensors.get(EMBED)
        out: list[dict[str, dict[str, np.ndarray]]] = [{v: {} for v in self.variants} for _ in cases]
        # per case and variant: residual stream of the token rows, pending MLP output
        resid = [{v: torch.from_numpy(self._embedding(embed[c.ids[0]], v)).unsqueeze(0) for v in self.variants}
                 for c in cases]
        pending: list[dict[str, torch.Tensor | None]] = [{v: None for v in self.variants} for _ in cases]
        if 0 in rep_layers:
            for c in range(len(cases)):
                for v in self.variants:
                    out[c][v]["rep.0"] = resid[c][v].numpy()
        del embed
        for i in range(shape.num_layers):
            ln_in = self._vector(layer_name(i, "input_layernorm.weight"))
            ln_post = self._vector(layer_name(i, "post_attention_layernorm.weight"))
            qkv = self._linear([layer_name(i, p) for p in QKV])
            o_proj = self._linear([layer_name(i, "self_attn.o_proj")])
            gate_up = self._linear([layer_name(i, p) for p in GATE_UP])
            down = self._linear([layer_name(i, "mlp.down_proj")])
            proj = None
            if tandem is not None:
                weight = ckpt.extras.get(f"projections.{i}.weight")  # [d_S, d_L]
                proj = {v: torch.from_numpy(stored_weight(weight, v, self.block_size)) for v in self.variants}
            for c, case in enumerate(cases):
                for v in self.variants:
                    x = resid[c][v]
                    if pending[c][v] is not None:
                        x = x + pending[c][v]
                    if i in rep_layers and i > 0:
                        out[c][v][f"rep.{i}"] = x.numpy()
                    m = 0
                    stream = x
                    if tandem is not None:
                        memory = case.memory[tandem["large_layers"].index(tandem["layer_map"][i])]
                        m = memory.shape[1]
                        stream = torch.cat([_apply(torch.from_numpy(memory), proj[v], None), x], dim=1)
                    attn, k, vv = self._attention(i, _rms_norm(stream, ln_in[v], shape.rms_eps), qkv[v], case)
                    out[c][v][f"present.{i}.key"] = k.numpy()
                    out[c][v][f"present.{i}.value"] = vv.numpy()
                    w, b = o_proj[v]
                    x = x + _apply(attn[:, m:], w, b)
                    h = _rms_norm(x, ln_post[v], shape.rms_eps)
                    w, b = gate_up[v]
                    g, u = _apply(h, w, b).chunk(2, dim=-1)
                    w, b = down[v]
                    resid[c][v], pending[c][v] = x, _apply(torch.nn.functional.silu(g) * u, w, b)

        norm = self._vector(FINAL_NORM)
        hidden = [{v: _rms_norm(resid[c][v] + pending[c][v], norm[v], shape.rms_eps) for v in self.variants}
                  for c in range(len(cases))]
        for c, case in enumerate(cases):
            for v in self.variants:
                if shape.num_layers in rep_layers:
                    out[c][v][f"rep.{shape.num_layers}"] = hidden[c][v].numpy()
                hidden[c][v] = hidden[c][v][:, case.logits_from:]
        head = self.ckpt.tensors.get(lm_head_name(shape, ckpt.tensors.names()))  # [V, d]
        vocab = np.asarray(ckpt.draft_vocab if role != "large" else [], dtype=np.int64)
        if vocab.size:  # a reduced draft vocabulary: logits of those tokens only
            head = head[vocab]
        logits = [{v: [] for v in self.variants} for _ in cases]
        for row in range(0, head.shape[0], HEAD_ROWS):  # slices: no second copy of the head
            for v in self.variants:
                weight = torch.from_numpy(stored_weight(head[row:row + HEAD_ROWS], v, self.block_size))
                for c in range(len(cases)):
                    logits[c][v].append(_apply(hidden[c][v], weight, None))
        del head
        router = _router(ckpt) if role in ("tandem_drafter", "plain_drafter") and ckpt.router_config else None
        router_embed = ckpt.tensors.get(EMBED) if router is not None else None
        for v in self.variants:
            table = None if router is None else torch.from_numpy(self._embedding(router_embed, v))
            if table is not None and vocab.size:
                table = table[torch.from_numpy(vocab)]
            for c in range(len(cases)):
                full = torch.cat(logits[c][v], dim=-1)
                out[c][v]["logits"] = full.numpy()
                if router is not None:
                    scores = router(full, table).numpy()  # [1, rows, 2]: ROUTER_KINDS order
                    for i, kind in enumerate(ROUTER_KINDS):
                        out[c][v][f"router_score_{kind}"] = scores[..., i]
        return out

    def _embedding(self, rows: np.ndarray, variant: str) -> np.ndarray:
        """Embedding rows `[n, d]` as the graph at `variant` holds them: tied embeddings of an
        int8/int4 graph are the LM head's quantized rows; fp16 graphs round them."""
        if variant in NBITS and lm_head_name(self.shape, self.ckpt.tensors.names()) == EMBED:
            return stored_weight(rows, variant, self.block_size)
        if variant == "fp16":
            return rows.astype(np.float16).astype(np.float32)
        return rows

    def _attention(self, i: int, h: torch.Tensor, qkv: tuple[torch.Tensor, torch.Tensor | None],
                   case: CaseInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal (windowed) GQA of rows h `[1, n, d]` after the case's past; returns the
        attention output `[1, n, nh*dh]` and the present K, V `[1, h_kv, P+n, dh]`."""
        shape = self.shape
        n = h.shape[1]
        past_k, past_v = (torch.from_numpy(t) for t in case.past[i])
        p = past_k.shape[2]
        w, b = qkv
        fused = _apply(h, w, b)[0]  # [n, q + 2 kv]
        q, k, v = fused.split([shape.q_size, shape.kv_size, shape.kv_size], dim=-1)
        cos, sin = self.cos[p:p + n], self.sin[p:p + n]
        q = _rotate(q.reshape(n, shape.num_heads, shape.head_dim), cos, sin)
        k = _rotate(k.reshape(n, shape.num_kv_heads, shape.head_dim), cos, sin)
        v = v.reshape(n, shape.num_kv_heads, shape.head_dim)
        keys = torch.cat([past_k[0], k.transpose(0, 1)], dim=1)  # [h_kv, P+n, dh]
        values = torch.cat([past_v[0], v.transpose(0, 1)], dim=1)
        groups = shape.num_heads // shape.num_kv_heads
        keys_q = keys.repeat_interleave(groups, dim=0)  # [nh, P+n, dh]
        values_q = values.repeat_interleave(groups, dim=0)
        scores = (q.transpose(0, 1) @ keys_q.transpose(1, 2)) * shape.scale  # [nh, n, P+n]
        query_pos = torch.arange(p, p + n).view(-1, 1)
        key_pos = torch.arange(p + n).view(1, -1)
        visible = key_pos <= query_pos
        if shape.windows[i]:
            visible &= query_pos - key_pos < shape.windows[i]
        scores = scores.masked_fill(~visible, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ values_q  # [nh, n, dh]
        attn = attn.transpose(0, 1).reshape(1, n, shape.q_size)
        return attn, keys.unsqueeze(0), values.unsqueeze(0)


def _apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias): a linear with its weight in Hugging Face's `[N, K]` layout."""
    y = x @ weight.T
    return y if bias is None else y + bias


def _router(ckpt: Checkpoint) -> torch.nn.Module:
    from tandem.train.router import Router, RouterConfig

    router = Router(RouterConfig.from_dict(ckpt.router_config))
    router.load_state_dict({k.removeprefix("router."): torch.from_numpy(ckpt.extras.get(k))
                            for k in ckpt.extras.names() if k.startswith("router.")})
    return router.eval()
