"""The reserve graph llama.cpp builds for one ubatch, rebuilt tensor by tensor.

llama.cpp sizes its compute buffer by placing every tensor of the worst-case graph
(llama_context::graph_reserve); to replay that placement (ggml_alloc) the graph must be the same
tensors in the same order, with the views and in-place ops that decide what is reused or kept
alive. dense_graph follows src/models/<arch>.cpp and src/llama-graph.cpp for the architectures
in _ARCHS; ``simulates`` says whether a model is one of them, exactly (any other block tensor
means a variant the graph does not follow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvgui.core.memory.ggml_alloc import Graph, Tensor

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

F32 = 4
F16 = 2

# (k_rot, v_rot, k_f32, v_f32): what the cache types change in the graph (cache_graph)
CacheGraph = tuple[bool, bool, bool, bool]
_QUANTIZED = frozenset({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"})

# Architectures whose graph dense_graph rebuilds, with the blk.N tensors each may have; a model
# with any other block tensor (a variant the graph does not follow) is not simulated.
_DENSE_BLOCK = frozenset({
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
    "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
    "ffn_down.weight", "rope_freqs.weight"})
_ARCHS: dict[str, frozenset[str]] = {
    "llama": _DENSE_BLOCK,
    "qwen2": _DENSE_BLOCK | {"attn_q.bias", "attn_k.bias", "attn_v.bias"},
    "qwen3": _DENSE_BLOCK | {"attn_q_norm.weight", "attn_k_norm.weight"},
    "qwen3moe": (_DENSE_BLOCK - {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
    | {"attn_q_norm.weight", "attn_k_norm.weight", "ffn_gate_inp.weight",
       "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"},
    "gpt-oss": (_DENSE_BLOCK - {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                                "ffn_norm.weight"})
    | {"attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias", "attn_sinks.weight",
       "post_attention_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp.bias",
       "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
       "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"},
    "deepseek2": (_DENSE_BLOCK - {"attn_q.weight", "attn_k.weight", "attn_v.weight"})
    | {"attn_q.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight", "attn_k_b.weight",
       "attn_v_b.weight", "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
       "ffn_down_exps.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
       "ffn_down_shexp.weight"},
    "lfm2": _DENSE_BLOCK | {"attn_q_norm.weight", "attn_k_norm.weight",
                            "shortconv.conv.weight", "shortconv.in_proj.weight",
                            "shortconv.out_proj.weight"},
    "gemma2": _DENSE_BLOCK | {"post_attention_norm.weight", "post_ffw_norm.weight"},
    "gemma3": _DENSE_BLOCK | {"post_attention_norm.weight", "post_ffw_norm.weight",
                              "attn_q_norm.weight", "attn_k_norm.weight"},
}


def simulates(model: ModelInfo) -> bool:
    """Whether the compute buffer of ``model`` is replayed through ggml-alloc."""
    allowed = _ARCHS.get(model.arch)
    swa_ok = model.arch in ("gemma2", "gemma3", "gpt-oss") and not model.swa_chunked
    keys = dict(model.arch_keys)
    if model.arch == "deepseek2":  # the lite layout (no q LoRA), MLA, softmax routing
        mla_keys = ("attention.key_length_mla", "attention.value_length_mla",
                    "attention.kv_lora_rank", "rope.dimension_count")
        if not model.is_mla or not all(k in keys for k in mla_keys) \
                or keys.get("expert_gating_func", 1) != 1 \
                or int(keys.get("expert_group_count", 1)) > 1:
            return False
    elif model.is_mla or model.n_embd_head_k != model.n_embd_head_v:
        return False
    return (allowed is not None and bool(model.block_tensors)
            and model.block_tensors <= allowed
            and bool(model.n_expert) == ("ffn_gate_inp.weight" in model.block_tensors)
            and not model.is_recurrent and (not model.is_hybrid or model.arch == "lfm2")
            and model.n_embd_head_k_swa in (0, model.n_embd_head_k)
            and model.n_embd_head_v_swa in (0, model.n_embd_head_v)
            and all((layer.has_kv or layer.recurrent) and (swa_ok or not layer.swa)
                    for layer in model.layers))


def _rot_size(head: int, k: bool) -> int:
    """llama_kv_cache::build_input_{k,v}_rot: the Hadamard matrix side for quantized caches."""
    if not k:
        return 64
    n = 64
    while head % (n * 2) == 0 and n < head:  # bounded: head 0 (no attention) would never end
        n *= 2
    return n


# A tensor's size, linear in the shape: bytes per token, per (KV cell x token), per (sliding
# window cell x token), per output, a constant, per KV cell and per sliding window cell (of all
# streams), per sequence. The graph's structure (what is freed or reused when) does not depend
# on sizes, so one recording serves every shape (ggml_alloc.record / replay).
_Size = tuple[int, int, int, int, int, int, int, int]


def scale(n_tokens: int, n_kv: int, n_swa: int, n_outputs: int, n_stream: int,
          n_seqs: int) -> _Size:
    """What each term of a size is multiplied by, for one shape (n_kv, n_swa: cells per
    stream)."""
    return (n_tokens, n_tokens * n_kv, n_tokens * n_swa, n_outputs, 1, n_kv * n_stream,
            n_swa * n_stream, n_seqs)


def _tok(n: int) -> _Size:
    return (n, 0, 0, 0, 0, 0, 0, 0)


def _out(n: int) -> _Size:
    return (0, 0, 0, n, 0, 0, 0, 0)


def _const(n: int) -> _Size:
    return (0, 0, 0, 0, n, 0, 0, 0)


def _per_kv(n: int, swa: bool = False) -> _Size:
    """n bytes per KV cell x token (the mask, the scores)."""
    return (0, 0, n, 0, 0, 0, 0, 0) if swa else (0, n, 0, 0, 0, 0, 0, 0)


def _per_cell(n: int, swa: bool = False) -> _Size:
    """n bytes per KV cell (a copy of the cache)."""
    return (0, 0, 0, 0, 0, 0, n, 0) if swa else (0, 0, 0, 0, 0, n, 0, 0)


def _per_seq(n: int) -> _Size:
    """n bytes per sequence (recurrent states)."""
    return (0, 0, 0, 0, 0, 0, 0, n)


def _plus(a: _Size, b: _Size) -> _Size:
    return tuple(x + y for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _moe_ffn(g: Graph, model: ModelInfo, cur: Tensor, rows: Callable[[int], _Size],
             kind: str, op: Callable[..., Tensor], view: Callable[..., Tensor]) -> Tensor:
    """build_moe_ffn: router, top-k, gate/up/down for the chosen experts, weighted sum.
    qwen3moe: softmax gating, normalized weights; gpt-oss: biases everywhere, softmax over
    the chosen experts' logits (SOFTMAX_WEIGHT)."""
    e, n_exp, used, ff = model.n_embd, model.n_expert, max(model.n_expert_used, 1), \
        model.n_ff_exp
    block = model.block_tensors
    oss = model.arch == "gpt-oss"
    keys = dict(model.arch_keys)
    logits = op(rows(F32 * n_exp), None, cur, layout=("r", kind))
    if "ffn_gate_inp.bias" in block:
        logits = op(rows(F32 * n_exp), logits, None, inplace=True, layout=("r", kind))
    probs = logits if oss else op(rows(F32 * n_exp), logits, inplace=True,
                                  layout=("r", kind))  # soft_max
    selected = view(op(rows(4 * n_exp), probs))  # argsort_top_k: argsort, view
    weights = op(rows(F32 * used), view(probs), selected, layout=("w", kind))  # get_rows
    if oss:  # soft_max over the chosen experts' logits
        weights = view(op(rows(F32 * used), view(weights), layout=("w", kind)))
    elif keys.get("expert_weights_norm", model.arch == "qwen3moe"):  # divided by their sum
        weights = view(weights)  # reshape_2d
        total = op(rows(F32), weights, layout=("s", kind))  # sum_rows
        total = op(rows(F32), total, inplace=True, layout=("s", kind))  # clamp
        weights = view(op(rows(F32 * used), weights, total, inplace=True, layout=("w", kind)))
    scale = float(keys.get("expert_weights_scale", 0.0))
    if scale not in (0.0, 1.0):
        weights = op(rows(F32 * used), weights, inplace=True, layout=("w", kind))
    g.expand(weights)
    x = view(cur)  # reshape_3d

    def experts(name: str, width: int, src: Tensor, layout: tuple[str, str]) -> Tensor:
        y = op(rows(F32 * width * used), None, src, selected, layout=layout)  # mul_mat_id
        if f"ffn_{name}_exps.bias" in block:
            y = op(rows(F32 * width * used), y, None, selected, inplace=True,
                   layout=layout)  # add_id
        return y

    up = experts("up", ff, x, ("x", kind))
    gate = experts("gate", ff, x, ("x", kind))
    act = op(rows(F32 * ff * used), gate, up, layout=("x", kind))  # swiglu (oai)
    down = experts("down", e, act, ("y", kind))
    down = op(rows(F32 * e * used), down, weights, inplace=True, layout=("y", kind))
    g.expand(down)
    parts = [view(down) for _ in range(used)]
    for part in parts:
        g.expand(part)
    out = parts[0]
    for part in parts[1:]:
        out = op(rows(F32 * e), out, part, inplace=True, layout=("e", kind))
        g.expand(out)
    if used == 1:
        out = op(rows(F32 * e), out)  # cont
    return out


def dense_graph(model: ModelInfo, n_layer: int, fa: bool, types: CacheGraph
                ) -> tuple[Graph, dict[Tensor, _Size]]:
    """The reserve graph of src/models/llama.cpp (qwen2: q/k/v biases; qwen3: q/k norms;
    qwen3moe: experts; gemma2/gemma3: scaled embeddings and queries, post-norms, GELU, sliding
    window layers with their own cache inputs), built in llama.cpp's order, with the views
    that keep tensors alive, and each tensor's size."""
    e = model.n_embd
    n_head, n_head_kv = model.n_head, model.n_head_kv
    hk = hv = model.n_embd_head_k
    k_rot, v_rot, k_f32, v_f32 = types  # what the cache types add (cache_graph)
    block = model.block_tensors
    gemma = model.arch in ("gemma2", "gemma3")
    oss = model.arch == "gpt-oss"
    mla = model.is_mla
    lfm2 = model.arch == "lfm2"  # short convolutions between the attention layers
    keys = dict(model.arch_keys)
    hv_mla = int(keys.get("attention.value_length_mla", 0))
    dense_lead = int(keys.get("leading_dense_block_count", 0))
    iswa = any(layer.swa for layer in model.layers)  # llama_kv_cache_iswa: two caches
    g = Graph()
    sizes: dict[Tensor, _Size] = {}
    cache = Tensor()  # the KV cache (and weights): in their own buffers, never placed here

    def op(size: _Size, *srcs: Tensor | None, inplace: bool = False,
           layout: tuple[str, str] | None = None) -> Tensor:
        node = Tensor(srcs, inplace=inplace, layout=layout)
        sizes[node] = size
        return node

    def view(src: Tensor, *more: Tensor | None) -> Tensor:
        root = src.view_src if src.view_src is not None else src
        return Tensor((src, *more) if src is not cache else more, view_src=root)

    def inp(size: _Size) -> Tensor:
        node = Tensor(is_input=True)
        sizes[node] = size
        return node

    def norm(x: Tensor, size: _Size, layout: tuple[str, str]) -> Tensor:
        x = op(size, x, inplace=True, layout=layout)  # rms_norm
        return op(size, x, None, inplace=True, layout=layout)  # * weight

    # build_inp_embd: the token path and the (unused) embedding input, both in the graph
    tokens = inp(_tok(4))
    embd_in = inp(_tok(F32 * e))
    inp_l = op(_tok(F32 * e), None, tokens, layout=("e", "t"))  # get_rows
    g.expand(inp_l)
    g.expand(embd_in)
    if gemma:
        inp_l = op(_tok(F32 * e), inp_l, inplace=True, layout=("e", "t"))  # * sqrt(n_embd)
    pos = inp(_tok(4))

    def cache_inputs(swa: bool) -> tuple[Tensor, ...]:
        """k_idxs, v_idxs, mask and the rotations of one cache (build_attn_inp_kv*)."""
        k_idxs = inp(_tok(8))
        v_idxs = inp(_tok(8 if fa else 8 * hv * n_head_kv))  # -fa off: one index per element
        mask = inp(_per_kv(F16 if fa else F32, swa))
        return k_idxs, v_idxs, mask

    base = cache_inputs(False)
    other = cache_inputs(True) if iswa else base
    rot_k = [inp(_const(F32 * _rot_size(hk, True) ** 2)) if k_rot else None
             for _ in range(1 + iswa)]
    rot_v = [inp(_const(F32 * _rot_size(hv, False) ** 2)) if v_rot else None
             for _ in range(1 + iswa)]
    out_ids = inp(_out(4))
    s_copy = inp(_const(4))  # (recurrent states to copy: one per sequence, <= 8 here)
    s_main, s_extra = view(s_copy), view(s_copy)

    for il in range(n_layer):
        swa = model.layers[il].swa if il < len(model.layers) else False
        k_idxs, v_idxs, mask = other if swa else base
        k_rot_m, v_rot_m = rot_k[swa and iswa], rot_v[swa and iswa]
        inp_sa = inp_l
        el = ("e", "t")
        cur = op(_tok(F32 * e), inp_l, inplace=True, layout=el)  # rms_norm
        cur.starts_layer = True
        cur = op(_tok(F32 * e), cur, None, inplace=True, layout=el)  # * attn_norm
        if lfm2 and il < len(model.layers) and model.layers[il].recurrent:  # shortconv
            d_conv = int(keys.get("shortconv.l_cache", 3)) - 1
            bcx = op(_tok(F32 * 3 * e), None, view(cur), layout=("bcx", "t"))  # in_proj
            c = view(bcx)
            bx = view(op(_tok(F32 * e), view(bcx), view(bcx), layout=("x", "t")))  # b*x, T
            states = view(cache)  # build_rs: clear one state, gather, copy the others
            g.expand(view(cache, view(states)))
            gathered = op(_per_seq(F32 * model.n_embd_r), states, s_main)
            g.expand(gathered)
            g.expand(view(cache, op(_const(0), states, s_extra), view(cache)))
            bx = op(_plus(_tok(F32 * e), _per_seq(F32 * e * d_conv)), view(gathered), bx)
            g.expand(view(cache, view(bx), view(cache)))  # the new conv state
            y = op(_tok(F32 * e), bx, None, layout=("x", "t"))  # ssm_conv
            y = op(_tok(F32 * e), c, y, inplace=True, layout=("x", "t"))  # c * conv
            cur = view(op(_tok(F32 * e), None, y, layout=el))  # out_proj, reshape
        elif mla:  # multi-head latent attention, absorbed (deepseek2: K cache only)
            hq, rope, rank = (int(keys[k]) for k in (
                "attention.key_length_mla", "rope.dimension_count", "attention.kv_lora_rank"))
            q = view(op(_tok(F32 * hq * n_head), None, cur, layout=("q", "t")))  # wq, reshape
            kvp = op(_tok(F32 * (rank + rope)), None, cur, layout=("kvp", "t"))  # wkv_a_mqa
            kpe = op(_tok(F32 * rope), view(kvp), pos, None, inplace=True,
                     layout=("kpe", "t"))  # rope(view)
            kv = norm(view(kvp), _tok(F32 * rank), ("kv", "t"))  # kv_a_norm(view)
            qpe = op(_tok(F32 * rope * n_head), view(q), pos, None, inplace=True,
                     layout=("qpe", "t"))  # rope(view)
            absorbed = op(_tok(F32 * rank * n_head), None, view(view(q)))  # wk_b x q_nope
            q = op(_tok(F32 * (rank + rope) * n_head), view(absorbed), qpe)  # concat
            v = view(kv)  # reshape_3d
            k = op(_tok(F32 * (rank + rope)), v, kpe)  # concat
            for x in (q, v, k):
                g.expand(x)
            g.expand(view(cache, None, view(k), k_idxs))  # cpy_k
            if fa:  # (an f32 cache is cast to f16 for it: K, and V, a view of K)
                kc = op(_per_cell(F16 * (rank + rope)), view(cache)) if k_f32 else None
                vc = op(_per_cell(F16 * rank), view(cache)) if k_f32 else None
                a = view(op(_tok(F32 * rank * n_head), view(view(q)), kc, vc, mask, None))
            else:  # V (a view of K) is made contiguous, transposed, in the cache's type
                vt = op(_per_cell((F32 if k_f32 else F16) * rank), view(cache))
                kq = op(_per_kv(F32 * n_head), None, view(view(q)), layout=("kq", "t"))
                kq = op(_per_kv(F32 * n_head), kq, mask, None, inplace=True, layout=("kq", "t"))
                a = op(_tok(F32 * rank * n_head), vt, kq)
            a = op(_tok(F32 * hv_mla * n_head), None, a)  # wv_b x kqv
            cur = view(op(_tok(F32 * hv_mla * n_head), view(a)))  # permute, cont, reshape
            g.expand(cur)
        else:
            qkv = []
            for name, width in (("q", hk * n_head), ("k", hk * n_head_kv), ("v", hv * n_head_kv)):
                x = op(_tok(F32 * width), None, cur, layout=(name, "t"))
                if f"attn_{name}.bias" in block:
                    x = op(_tok(F32 * width), x, None, inplace=True, layout=(name, "t"))
                qkv.append(view(x))  # reshape_3d
            q, k, v = qkv
            q_size, k_size, v_size = _tok(F32 * hk * n_head), _tok(F32 * hk * n_head_kv), \
                _tok(F32 * hv * n_head_kv)
            if "attn_q_norm.weight" in block:
                q = norm(q, q_size, ("q3", "t"))
            q = op(q_size, q, pos, None, inplace=True, layout=("q3", "t"))  # rope
            if "attn_k_norm.weight" in block:
                k = norm(k, k_size, ("k3", "t"))
            k = op(k_size, k, pos, None, inplace=True, layout=("k3", "t"))
            if gemma:
                q = op(q_size, q, inplace=True, layout=("q3", "t"))  # * f_attention_scale
            if k_rot_m is not None:  # llama_mul_mat_hadamard: reshape, mul_mat, reshape
                q = view(op(q_size, k_rot_m, view(q)))
                k = view(op(k_size, k_rot_m, view(k)))
            if v_rot_m is not None:
                v = view(op(v_size, v_rot_m, view(v)))
            for x in (q, k, v) if iswa else (q, v, k):
                g.expand(x)
            g.expand(view(cache, None, view(k), k_idxs))  # cpy_k: set_rows into the cache
            if fa:
                g.expand(view(cache, None, view(v), v_idxs))
            else:  # the V cache is transposed: one row per element
                g.expand(view(cache, view(cache), view(view(v)), v_idxs))
            qp = view(view(q))  # view_4d (streams), permute
            attn_size = _tok(F32 * hv * n_head)
            if fa:  # (an f32 cache is cast to f16 for it)
                kc = op(_per_cell(F16 * hk * n_head_kv, swa), view(cache)) if k_f32 else None
                vc = op(_per_cell(F16 * hv * n_head_kv, swa), view(cache)) if v_f32 else None
                cur = view(op(attn_size, qp, kc, vc, mask, None))
            else:
                kq_size = _per_kv(F32 * n_head, swa)
                kq = op(kq_size, None, qp, layout=("kq", "t"))
                if model.arch == "gemma2":  # attention logit soft-capping: scale, tanh, scale
                    for _ in range(3):
                        kq = op(kq_size, kq, inplace=True, layout=("kq", "t"))
                kq = op(kq_size, kq, mask, None, inplace=True, layout=("kq", "t"))  # soft_max_ext
                kqv = op(attn_size, None, kq)
                cur = op(attn_size, view(kqv))  # permute, cont_2d
            g.expand(cur)
            if v_rot_m is not None:
                cur = view(op(attn_size, v_rot_m, view(cur)))
        cur = op(_tok(F32 * e), None, cur, layout=el)  # wo
        if "attn_output.bias" in block:
            cur = op(_tok(F32 * e), cur, None, inplace=True, layout=el)
        rows = _tok
        if il == n_layer - 1 and not oss:  # only the rows that give output go on (out_ids)
            rows, el = _out, ("e", "o")
            cur = op(rows(F32 * e), cur, out_ids, layout=el)
            inp_sa = op(rows(F32 * e), inp_sa, out_ids, layout=el)
        if gemma:
            cur = norm(cur, rows(F32 * e), el)  # attn_post_norm
        ffn_inp = op(rows(F32 * e), *((inp_sa, cur) if lfm2 else (cur, inp_sa)), inplace=True,
                     layout=el)
        cur = norm(ffn_inp, rows(F32 * e), el)
        if model.n_expert and il >= dense_lead:
            normed = cur
            cur = _moe_ffn(g, model, cur, rows, el[1], op, view)
            if "ffn_up_shexp.weight" in block:  # shared experts: a plain SiLU-gated FFN
                width = model.n_ff_exp * int(keys.get("expert_shared_count", 1))
                fl = ("fs", el[1])
                gate = op(rows(F32 * width), None, normed, layout=fl)
                up = op(rows(F32 * width), None, normed, layout=fl)
                shexp = op(rows(F32 * e), None, op(rows(F32 * width), gate, up, layout=fl),
                           layout=el)
                cur = op(rows(F32 * e), cur, shexp, inplace=True, layout=el)
        else:
            fl = ("f", el[1])
            gate = op(rows(F32 * model.n_ff), None, cur, layout=fl)
            up = op(rows(F32 * model.n_ff), None, cur, layout=fl)
            cur = op(rows(F32 * model.n_ff), gate, up, layout=fl)  # swiglu / geglu
            cur = op(rows(F32 * e), None, cur, layout=el)
        if gemma:
            cur = norm(cur, rows(F32 * e), el)  # ffn_post_norm
        inp_l = op(rows(F32 * e), *((ffn_inp, cur) if lfm2 else (cur, ffn_inp)), inplace=True,
                   layout=el)
    if oss:  # the last layer's output is kept (t_h_nextn), then only the output rows go on
        inp_l.is_output = True
        inp_l = op(_out(F32 * e), inp_l, out_ids, layout=("e", "o"))
    cur = norm(inp_l, _out(F32 * e), ("e", "o"))
    cur.is_output = True  # t_embd
    logits = op(_out(F32 * model.n_vocab), None, cur, layout=("v", "o"))
    if model.arch == "gemma2":  # final logit soft-capping: scale, tanh, scale
        for _ in range(3):
            logits = op(_out(F32 * model.n_vocab), logits, inplace=True, layout=("v", "o"))
    logits.is_output = True
    g.expand(logits)
    return g, sizes


def cache_graph(model: ModelInfo, type_k: str, type_v: str) -> CacheGraph:
    """What the cache types add to the graph: llama_kv_cache rotates quantized K and V by a
    Hadamard matrix (heads of 64-multiples; not for MLA), and flash attention casts an f32
    cache to f16 (MLA without it copies V in the cache's type)."""
    return (type_k in _QUANTIZED and model.n_embd_head_k % 64 == 0 and not model.is_mla,
            type_v in _QUANTIZED and model.n_embd_head_v % 64 == 0 and not model.is_mla,
            type_k == "f32", type_v == "f32")
