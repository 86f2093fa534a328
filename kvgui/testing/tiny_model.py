"""A tiny but real GGUF model that the bundled llama.cpp loads and generates from in milliseconds.

Tests need a model llama.cpp accepts (to compare kvgui's estimate with llama.cpp's own figures,
and to chat) without downloading anything. Weights are random; the vocabulary is a byte-level
SentencePiece one (every text tokenizes, through byte fallback) with a ChatML template.

``arch="gemma2"`` gives a model with interleaved sliding-window layers (llama.cpp's iSWA cache);
the llama architecture in this llama.cpp has no sliding-window support.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))

_CHARS = (
    "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()[]{}/\\*+=_<>@#$%&"
)
_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part hello world model memory "
    "cache context token llama answer question fit gpu"
)
_WORDS: tuple[str, ...] = tuple(_TEXT.split(" "))

SWA_ARCHS = ("gemma2",)
ARCHS = ("llama", *SWA_ARCHS)


def tiny_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: specials, 256 byte tokens, characters, then word pieces.

    Every word piece is a known piece plus one character, so llama.cpp's SPM merge reaches it.
    """
    from gguf import TokenType

    tokens: list[str] = list(SPECIAL_TOKENS)
    types: list[int] = [int(TokenType.UNKNOWN)]
    types += [int(TokenType.CONTROL)] * (len(SPECIAL_TOKENS) - 1)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    pieces: list[str] = list(_CHARS)
    seen = set(pieces)
    for word in _WORDS:
        w = "\u2581" + word
        for end in range(2, len(w) + 1):
            if w[:end] not in seen:
                seen.add(w[:end])
                pieces.append(w[:end])
    base = len(tokens)
    if n_vocab < base + len(_CHARS):
        raise ValueError(f"n_vocab must be at least {base + len(_CHARS)}, not {n_vocab}")
    i = 0
    while len(pieces) < n_vocab - base:  # pad with numbered pieces that are still valid text
        pieces.append(f"\u2581w{i}")
        i += 1
    pieces = pieces[: n_vocab - base]
    tokens += pieces
    types += [int(TokenType.NORMAL)] * len(pieces)
    # Specials and bytes score 0; longer pieces score higher so merges prefer them.
    scores = [0.0] * base + [float(len(p)) - j * 1e-4 for j, p in enumerate(pieces)]
    return tokens, scores, types


def _check(arch: str, n_embd: int, n_head: int, n_head_kv: int, head_dim: int | None,
           n_swa: int) -> int:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if n_swa and arch not in SWA_ARCHS:
        raise ValueError(f"n_swa needs a sliding-window arch ({', '.join(SWA_ARCHS)})")
    if arch in SWA_ARCHS and n_swa <= 0:
        raise ValueError(f"arch {arch!r} needs n_swa > 0")
    head_dim = head_dim or n_embd // n_head
    if head_dim % 32:
        raise ValueError(f"head_dim must be a multiple of 32, not {head_dim}")
    if n_head % n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")
    return head_dim


def _tensor_specs(
    arch: str, n_layer: int, n_embd: int, n_q: int, n_kv: int, n_ff: int, n_vocab: int,
    n_v: int | None = None,
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy shape) of every tensor; 1-D ones are norms. numpy (rows, cols) is ggml's
    ne {cols, rows}, i.e. llama.cpp's {n_in, n_out}."""
    specs: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (n_vocab, n_embd)),
        ("output_norm.weight", (n_embd,)),
    ]
    if arch == "llama":
        specs.append(("output.weight", (n_vocab, n_embd)))
    for i in range(n_layer):
        p = f"blk.{i}."
        specs += [
            (p + "attn_norm.weight", (n_embd,)),
            (p + "attn_q.weight", (n_q, n_embd)),
            (p + "attn_k.weight", (n_kv, n_embd)),
            (p + "attn_v.weight", (n_v or n_kv, n_embd)),
            (p + "attn_output.weight", (n_embd, n_q)),
            (p + "ffn_norm.weight", (n_embd,)),
            (p + "ffn_gate.weight", (n_ff, n_embd)),
            (p + "ffn_up.weight", (n_ff, n_embd)),
            (p + "ffn_down.weight", (n_embd, n_ff)),
        ]
        if arch == "gemma2":
            specs += [(p + "post_attention_norm.weight", (n_embd,)),
                      (p + "post_ffw_norm.weight", (n_embd,))]
    return specs


def _writer(path: Path, arch: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
            head_dim: int, n_ff: int, n_vocab: int, n_ctx_train: int, n_swa: int,
            swa_pattern: int, file_type: int, name: str, value_dim: int | None = None,
            chat_template: str | None = CHATML_TEMPLATE) -> Any:
    from gguf import GGUFWriter

    tokens, scores, types = tiny_vocab(n_vocab)
    w = GGUFWriter(path, arch)
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(value_dim or head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if n_swa:
        w.add_sliding_window(n_swa)
        w.add_sliding_window_pattern(swa_pattern)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_eot_token_id(IM_END_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    return w


TINY_DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k")


def _add_matrix(w: Any, name: str, shape: tuple[int, ...], dtype: str, rng: Any) -> None:
    """A random matrix (numpy shape: rows, row length) in ``dtype``; quantized ones through
    gguf's reference quantizer, Q4_K as valid blocks of random nibbles (gguf has no Q4_K
    quantizer): small f16 scales, random 6-bit sub-scales."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    values = rng.standard_normal(shape) / np.sqrt(shape[1])
    if dtype in ("f32", "f16"):
        w.add_tensor(name, values.astype(np.float32 if dtype == "f32" else np.float16))
        return
    if dtype in ("q8_0", "q4_0"):
        qtype = GGMLQuantizationType.Q8_0 if dtype == "q8_0" else GGMLQuantizationType.Q4_0
        w.add_tensor(name, quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)
        return
    rows, cols = shape
    if cols % 256:
        raise ValueError(f"{name}: q4_k needs rows of a multiple of 256, not {cols}")
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    scales = np.frombuffer(np.array([0.01, 0.001], dtype=np.float16).tobytes(), np.uint8)
    blocks[:, :, 0:4] = scales  # d, dmin
    w.add_tensor(name, blocks.reshape(rows, -1), raw_dtype=GGMLQuantizationType.Q4_K)


def write_tiny_model(
    path: str | Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_head_kv: int = 1,
    head_dim: int | None = None,
    n_ff: int = 128,
    n_vocab: int = 640,
    n_ctx_train: int = 4096,
    dtype: str = "f32",
    n_swa: int = 0,
    swa_pattern: int = 2,
    value_dim: int | None = None,
    seed: int = 0,
    tensor_types: Mapping[str, str] | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Path:
    """Write a random-weight model to ``path`` and return it.

    ``head_dim`` defaults to n_embd // n_head and must be a multiple of 32 (the block size of
    the quantized KV cache types). ``n_swa`` > 0 needs a sliding-window arch ("gemma2"); every
    ``swa_pattern``-th layer is then a full-attention layer, the others use the window.
    ``value_dim`` (V head size, default head_dim) other than head_dim loads, but llama.cpp's
    llama graph then fails a GGML_ASSERT: tests use it to make llama.cpp abort on purpose.
    ``dtype`` is the matrices' type: f32, f16, or the quantized q8_0, q4_0, q4_k (which ask
    for row lengths that are multiples of their block, 32 or 256); ``tensor_types`` sets it
    per tensor kind ({"ffn_down": "f16"}), so tests can steer weights into llama.cpp's
    extra CPU buffer types (AMX, CPU_REPACK). Norms stay f32.
    ``chat_template`` None writes no template (as a base model's GGUF).
    """
    import numpy as np
    from gguf import LlamaFileType

    head_dim = _check(arch, n_embd, n_head, n_head_kv, head_dim, n_swa)
    types = dict(tensor_types or {})
    for t in (dtype, *types.values()):
        if t not in TINY_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(TINY_DTYPES)}, not {t!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    ftype = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
             "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0,
             "q4_k": LlamaFileType.MOSTLY_Q4_K_M}[dtype]
    w = _writer(path, arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                head_dim=head_dim, n_ff=n_ff, n_vocab=n_vocab, n_ctx_train=n_ctx_train,
                n_swa=n_swa, swa_pattern=swa_pattern, file_type=int(ftype),
                name=f"kvgui tiny {arch}", value_dim=value_dim, chat_template=chat_template)
    for name, shape in _tensor_specs(arch, n_layer, n_embd, n_head * head_dim,
                                     n_head_kv * head_dim, n_ff, n_vocab,
                                     n_head_kv * (value_dim or head_dim)):
        if len(shape) == 1:
            w.add_tensor(name, np.ones(shape, dtype=np.float32))  # norms stay f32
        else:
            kind = name.removesuffix(".weight").split(".")[-1]
            _add_matrix(w, name, shape, types.get(kind, dtype), rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


SPARSE_DTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}  # ggml type ids
_SPARSE_FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # llama_ftype


def write_sparse_model(
    path: str | Path,
    *,
    arch: str = "llama",
    n_layer: int = 32,
    n_embd: int = 4096,
    n_head: int = 32,
    n_head_kv: int = 8,
    head_dim: int | None = None,
    n_ff: int = 14336,
    n_vocab: int = 128256,
    n_ctx_train: int = 131072,
    dtype: str = "q4_0",
    n_swa: int = 0,
    swa_pattern: int = 2,
) -> Path:
    """A full-size model (Llama-3-8B shapes by default) whose tensor data is a sparse hole.

    The header is real; the data is never written, so the file takes a few MiB on disk while
    claiming its full size. llama.cpp's no_alloc dry run never reads the data, so this is how
    tests get llama.cpp's figures for a large model. Do not generate from it.
    """
    import os

    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES

    head_dim = _check(arch, n_embd, n_head, n_head_kv, head_dim, n_swa)
    if dtype not in SPARSE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SPARSE_DTYPES)}, not {dtype!r}")
    path = Path(path)
    w = _writer(path, arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                head_dim=head_dim, n_ff=n_ff, n_vocab=n_vocab, n_ctx_train=n_ctx_train,
                n_swa=n_swa, swa_pattern=swa_pattern, file_type=_SPARSE_FTYPES[dtype],
                name=f"kvgui sparse {arch}")
    align = 32  # GGUF default alignment, which GGUFWriter uses
    data_bytes = 0
    for name, shape in _tensor_specs(arch, n_layer, n_embd, n_head * head_dim,
                                     n_head_kv * head_dim, n_ff, n_vocab):
        qtype = GGMLQuantizationType(0 if len(shape) == 1 else SPARSE_DTYPES[dtype])
        block, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * type_size
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        data_bytes += -(-nbytes // align) * align
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = path.stat().st_size
    os.truncate(path, -(-header // align) * align + data_bytes)
    return path
