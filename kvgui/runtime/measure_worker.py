"""The measurement worker process: ``python -m kvgui.runtime.measure_worker``.

It loads the model once, then for each K/V cache pair creates a llama.cpp context with exactly
the kvgui Settings (through the low-level API: every field set explicitly, flash attention
included) and runs the text through it llama-perplexity style. It runs in its own process
because llama.cpp aborts its process on a failed GGML_ASSERT or an out-of-memory allocation.
The request and events are described in ``kvgui.runtime.measure``.

Honest by construction: one tokenization, the same windows and the same scored positions for
every pair; the f16/f16 run goes first and its log-probabilities (every evaluated position;
top-k of each when the full set would be too large) are what the others are compared with.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from kvgui.core.commandline.llama_params import default_threads, llama_params
from kvgui.core.config.settings import AUTO_THREADS, Settings
from kvgui.core.quality.advice import LADDER, SWEEP_START, QualityThreshold, next_sweep_pair
from kvgui.core.quality.needle import (
    ANSWER_TOKENS,
    DEFAULT_DEPTHS,
    DEFAULT_SEED,
    NeedlePrompt,
    answer_matches,
)
from kvgui.core.quality.needle import prompts as needle_prompts
from kvgui.core.quality.results import (
    DEFAULT_PROFILE_BINS,
    DEFAULT_SPEED_REPEATS,
    DEFAULT_WINDOW,
    REFERENCE_PAIR,
    NeedleProbe,
    PairResult,
    ProfileBin,
    median,
    pair_label,
)
from kvgui.runtime.llama_log import LOG_CONT, LOG_DEBUG, error_lines, parse_llama_log
from kvgui.runtime.llama_structs import model_params
from kvgui.runtime.protocol import decode, encode

_ROWS = 32  # logits rows scored at once: each thread's two buffers are 32 x n_vocab floats
_KEEP: list[Any] = []  # what llama.cpp holds pointers to (callbacks, arrays): never collected


class MeasureFailure(Exception):
    """A failure that ends the whole run (the model does not load, the text is too short)."""


class PairFailed(Exception):
    """A failure of one pair only (llama.cpp refused the context, a decode failed)."""


Emit = Callable[..., None]


def _take_stdout() -> BinaryIO:
    """The event stream: a private copy of fd 1; fd 1 itself now points at stderr, so
    anything llama.cpp or Python prints cannot corrupt the JSON lines."""
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb", buffering=0)


def _emitter(stream: BinaryIO) -> Emit:
    lock = threading.Lock()

    def emit(kind: str, **payload: Any) -> None:
        with lock:
            try:
                stream.write(encode({"type": kind, **payload}))
            except OSError:
                os._exit(0)  # the caller is gone

    return emit


def _watch_stdin(stream: BinaryIO) -> None:
    """Exit at once on a "cancel" request or when stdin closes (the caller died or gave up)."""

    def run() -> None:
        for line in iter(stream.readline, b""):
            try:
                if decode(line).get("type") == "cancel":
                    break
            except ValueError:
                continue
        os._exit(3)

    threading.Thread(target=run, name="kvgui-measure-stdin", daemon=True).start()


class LogCapture:
    """llama_log_set callback: keeps the non-debug log, and mirrors it to stderr (where the
    caller keeps the last lines to show if the process dies)."""

    def __init__(self) -> None:
        import llama_cpp

        self.records: list[tuple[int, str]] = []
        self._level = LOG_DEBUG

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            try:
                if level != LOG_CONT:
                    self._level = level
                if self._level == LOG_DEBUG:
                    return
                s = (text or b"").decode("utf-8", "replace")
                self.records.append((self._level, s))
                sys.stderr.write(s)
            except Exception:  # an exception must never cross into C
                pass

        self._callback = _callback  # the ctypes thunk must outlive every llama.cpp call
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def take(self) -> list[tuple[int, str]]:
        records, self.records = self.records, []
        return records


# --- llama.cpp objects ----------------------------------------------------------------------


def load_model(path: str, settings: Settings, emit: Emit) -> Any:
    """llama_model_load_from_file with the model fields of the one translation."""
    import llama_cpp as L

    L.llama_backend_init()
    last = [-1.0]

    @L.llama_progress_callback
    def on_progress(fraction: float, user_data: ctypes.c_void_p) -> bool:
        if fraction - last[0] >= 0.02 or fraction >= 1.0:
            last[0] = fraction
            emit("progress", stage="load", fraction=round(float(fraction), 4))
        return True

    _KEEP.append(on_progress)
    p = model_params(L, llama_params(settings), _KEEP, progress_callback=on_progress)
    model = L.llama_model_load_from_file(path.encode("utf-8"), p)
    if not model:
        raise MeasureFailure(f"llama.cpp could not load {path} (see its log)")
    return model


def context_params(settings: Settings, type_k: str, type_v: str, n_threads: int) -> Any:
    """llama_context_params for one pair: the one translation's fields for the settings with
    this pair's types, and the request's thread count."""
    import llama_cpp as L

    from kvgui.runtime import llama_structs

    pair = settings.replace(type_k=type_k, type_v=type_v, n_threads=n_threads)
    return llama_structs.context_params(L, llama_params(pair))


def tokenize(model: Any, text: str) -> tuple[list[int], bool, int]:
    """Tokens of the whole text (with BOS if the model adds one), add_bos, the BOS id."""
    import llama_cpp as L

    vocab = L.llama_model_get_vocab(model)
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, True, False)
    if n < 0:  # not enough room (cannot happen: a token covers at least one byte)
        raise MeasureFailure(f"tokenizer needs {-n} tokens")
    return list(buf[:n]), bool(L.llama_vocab_get_add_bos(vocab)), int(L.llama_vocab_bos(vocab))


def _kv_from_log(log: str) -> tuple[int | None, int | None, int | None, bool | None]:
    """(kv, k, v, flash attention on) as llama.cpp logged them creating the context."""
    m = parse_llama_log(log)
    if not m.kv_caches and not m.recurrent:
        return None, None, None, m.flash_attn
    return m.kv, m.kv_k, m.kv_v, m.flash_attn


# --- the evaluation -------------------------------------------------------------------------


@dataclass
class Plan:
    """The windows every pair is evaluated on, and what else each pair runs."""

    tokens: list[int]
    window: int
    windows: int
    add_bos: bool
    bos: int
    n_gen: int
    score_from: int | None = None  # first scored logit position; None = window // 2
    profile_bins: int = DEFAULT_PROFILE_BINS
    speed_repeats: int = DEFAULT_SPEED_REPEATS
    pp_tokens: int = DEFAULT_WINDOW
    needles: list[NeedleTokens] = field(default_factory=list)

    @property
    def first(self) -> int:
        """First scored logit position in a window (llama-perplexity: n_ctx / 2)."""
        return self.window // 2 if self.score_from is None else self.score_from

    @property
    def per_window(self) -> int:
        return self.window - 1 - self.first

    @property
    def n_eval(self) -> int:
        return self.windows * self.per_window

    def window_tokens(self, w: int) -> list[int]:
        toks = self.tokens[w * self.window:(w + 1) * self.window]
        if self.add_bos:
            toks[0] = self.bos
        return toks

    # the work of one pair, in batch-token equivalents, for the progress and its ETA
    def work(self) -> dict[str, float]:
        speed = 0.0
        if self.speed_repeats > 0:
            speed = (self.speed_repeats + 1) * self.pp_tokens + self.first \
                + (self.speed_repeats * self.n_gen + 1) * 8
        return {"eval": float(self.windows * self.window), "speed": speed,
                "retrieval": float(sum(len(n.tokens) + 8 * ANSWER_TOKENS
                                       for n in self.needles))}


@dataclass
class NeedleTokens:
    """A retrieval prompt, tokenized once for every pair."""

    prompt: NeedlePrompt
    tokens: list[int]
    position: int  # token index of the fact


class Reference:
    """The f16 run's distributions at each scored position: every log-prob when that fits in
    ``full_max_bytes``, else the top ``topk`` (the rest of the mass counted as one outcome,
    which gives a lower bound of the KL that is tight when the top-k hold nearly all of it)."""

    def __init__(self, n_eval: int, n_vocab: int, topk: int, full_max_bytes: int) -> None:
        self.full = n_eval * n_vocab * 4 <= full_max_bytes
        self.k = n_vocab if self.full else min(topk, n_vocab)
        # full: the probabilities p (float32) and, per row, sum(p log p) and sum(p), so that
        # KL(p || q) = sum(p log p) - sum(p x) + lse(x) sum(p) needs one pass over q's logits x;
        # top-k: the k largest log-probs and their token ids
        self.logp = np.empty((n_eval, self.k), dtype=np.float32)
        self.neg_entropy = np.empty(n_eval, dtype=np.float64)
        self.mass = np.empty(n_eval, dtype=np.float64)
        self.idx = None if self.full else np.empty((n_eval, self.k), dtype=np.int32)
        self.argmax = np.empty(n_eval, dtype=np.int32)
        # touch every page now, before any timing: the first write to a fresh page costs a
        # page fault, which would otherwise land in the reference run's evaluation time
        self.logp.fill(0.0)

    @property
    def method(self) -> str:
        return "full" if self.full else f"top{self.k}"


def _dot_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products, accumulated in float64."""
    return np.asarray(np.einsum("ij,ij->i", a, b, dtype=np.float64))


class Scorer:
    """Scores rows of logits (a read-only view of llama.cpp's buffer: nothing is copied)
    against the reference: the next token's log-likelihood, KL(reference || this) and top-1
    agreement, in blocks of ``_ROWS`` with preallocated float32 buffers, on ``n_threads``
    threads while the model waits (numpy releases the GIL), as llama-perplexity scores with
    all its threads. The log-sum-exp is accumulated in float64; a row's log-probs are
    the reference keeps its probabilities and, per row, sum(p log p) and sum(p), so a compared
    run needs one pass over its logits for the KL; both sides use the same arithmetic, so two
    identical runs give a KL of exactly 0."""

    def __init__(self, ref: Reference, n_vocab: int, n_threads: int) -> None:
        self.ref = ref
        self.n_threads = max(1, n_threads)
        self._bufs = [np.empty((_ROWS, n_vocab), np.float32) for _ in range(self.n_threads)]
        self._pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="kvgui-score") \
            if self.n_threads > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def score(self, logits: np.ndarray, at: int, nxt: np.ndarray, record: bool,
              nll: np.ndarray, kl: np.ndarray, agree: np.ndarray) -> None:
        """Rows ``logits[i]`` are positions ``at + i`` of the evaluation; ``nxt[i]`` the token
        that follows. Fills ``nll``, ``kl`` and ``agree`` at those positions."""
        n = logits.shape[0]
        blocks = list(range(0, n, _ROWS))
        if self._pool is None or len(blocks) == 1:
            for r0 in blocks:
                self._block(logits, r0, at, nxt, record, nll, kl, agree, 0)
            return
        parts = [blocks[j::self.n_threads] for j in range(self.n_threads)]
        futures = [self._pool.submit(self._blocks, logits, part, at, nxt, record, nll, kl,
                                     agree, j) for j, part in enumerate(parts) if part]
        for f in futures:
            f.result()

    def _blocks(self, logits: np.ndarray, part: list[int], *args: Any) -> None:
        for r0 in part:
            self._block(logits, r0, *args)

    def _block(self, logits: np.ndarray, r0: int, at: int, nxt: np.ndarray, record: bool,
               nll: np.ndarray, kl: np.ndarray, agree: np.ndarray, j: int) -> None:
        x = logits[r0:r0 + _ROWS]
        k = x.shape[0]
        b = self._bufs[j][:k]
        lo = at + r0
        sl = slice(lo, lo + k)
        rows = np.arange(k)
        amax = x.argmax(axis=1)  # one pass gives both the top token and the maximum
        m = x[rows, amax]
        np.subtract(x, m[:, None], out=b)
        np.exp(b, out=b)
        total = b.sum(axis=1, dtype=np.float64)
        lse = (m + np.log(total)).astype(np.float32)
        nll[sl] = lse.astype(np.float64) - x[rows, nxt[r0:r0 + k]]
        ref = self.ref
        if record:
            ref.argmax[sl] = amax
            agree[sl] = True
            kl[sl] = 0.0
            if ref.idx is None:
                p_ref = ref.logp[sl]  # the full reference keeps probabilities
                np.multiply(b, (1.0 / total).astype(np.float32)[:, None], out=p_ref)
                mass = p_ref.sum(axis=1, dtype=np.float64)
                ref.mass[sl] = mass
                ref.neg_entropy[sl] = _dot_rows(p_ref, x) - lse.astype(np.float64) * mass
            else:
                idx = np.argpartition(x, -ref.k, axis=1)[:, -ref.k:]
                ref.idx[sl] = idx
                ref.logp[sl] = np.take_along_axis(x, idx, axis=1) - lse[:, None]
            return
        agree[sl] = amax == ref.argmax[sl]
        if ref.idx is None:  # sum p (log p - x + lse), in the same arithmetic as the record
            kl[sl] = ref.neg_entropy[sl] - (_dot_rows(ref.logp[sl], x)
                                            - lse.astype(np.float64) * ref.mass[sl])
            return
        refp = ref.logp[sl]
        q = np.take_along_axis(x, ref.idx[sl], axis=1) - lse[:, None]
        pk = np.exp(refp.astype(np.float64))
        top = np.einsum("ij,ij->i", pk, refp - q, dtype=np.float64)
        p_rest = np.clip(1.0 - pk.sum(axis=1), 0.0, 1.0)
        q_rest = np.clip(1.0 - np.exp(q.astype(np.float64)).sum(axis=1), 1e-30, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rest = np.where(p_rest > 0, p_rest * (np.log(p_rest) - np.log(q_rest)), 0.0)
        kl[sl] = top + rest


class Batch:
    """A llama_batch for one sequence, refilled for every decode."""

    def __init__(self, capacity: int) -> None:
        import llama_cpp as L

        self.capacity = capacity
        self.b = L.llama_batch_init(capacity, 0, 1)

    def fill(self, tokens: list[int], pos0: int, want: Callable[[int], bool]) -> int:
        b = self.b
        b.n_tokens = len(tokens)
        n_out = 0
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            out = want(pos0 + i)
            b.logits[i] = out
            n_out += out
        return n_out

    def free(self) -> None:
        import llama_cpp as L

        L.llama_batch_free(self.b)


def _decode(ctx: Any, batch: Batch) -> float:
    """Decode and wait for the device; seconds taken."""
    import llama_cpp as L

    t0 = time.perf_counter()
    rc = L.llama_decode(ctx, batch.b)
    L.llama_synchronize(ctx)
    dt = time.perf_counter() - t0
    if rc != 0:
        raise PairFailed(f"llama_decode failed (code {rc})")
    return dt


def _prefill(ctx: Any, batch: Batch, toks: list[int], want_last: bool = True) -> float:
    """Decode ``toks`` from position 0 in batches; logits for the last one when asked."""
    last = len(toks) - 1
    t = 0.0
    for b0 in range(0, len(toks), batch.capacity):
        batch.fill(toks[b0:b0 + batch.capacity], b0, lambda p: want_last and p == last)
        t += _decode(ctx, batch)
    return t


Progress = Callable[[str, float], None]  # phase, fraction of that phase done


def run_pair(
    model: Any,
    settings: Settings,
    type_k: str,
    type_v: str,
    plan: Plan,
    ref: Reference,
    record: bool,
    n_threads: int,
    log: LogCapture,
    on_progress: Progress,
) -> PairResult:
    """Evaluate one pair: the windows (quality), then speed, then the retrieval probes.
    ``record``: this is the reference run, fill ``ref`` (its KL is 0 and its agreement 1 by
    definition); else compare with ``ref``."""
    import llama_cpp as L

    t_start = time.perf_counter()
    log.take()
    ctx = L.llama_init_from_model(model, context_params(settings, type_k, type_v, n_threads))
    records = log.take()
    if not ctx:
        errors = error_lines(records)
        raise PairFailed(errors[-1] if errors else "llama.cpp refused to create the context")
    kv, kv_k, kv_v, fa = _kv_from_log("".join(t for _, t in records))
    vocab = L.llama_model_get_vocab(model)
    n_vocab = int(L.llama_vocab_n_tokens(vocab))
    n_batch = min(settings.n_batch, plan.window)
    batch = Batch(max(n_batch, 1))
    mem = L.llama_get_memory(ctx)
    scorer = Scorer(ref, n_vocab, n_threads)
    try:
        # Warm-up: the first decodes of a context pay one-off costs (graph allocation for
        # this batch size, weights paged in); one batch of the first window, then forgotten.
        batch.fill(plan.window_tokens(0)[:n_batch], 0, lambda p: False)
        _decode(ctx, batch)
        L.llama_memory_clear(mem, True)

        nll = np.empty(plan.n_eval, dtype=np.float64)
        kl = np.zeros(plan.n_eval, dtype=np.float64)
        agree = np.empty(plan.n_eval, dtype=bool)
        first, last = plan.first, plan.window - 2  # scored logit positions
        t_eval = time.perf_counter()
        for w in range(plan.windows):
            toks = plan.window_tokens(w)
            toks_arr = np.asarray(toks, dtype=np.int64)
            L.llama_memory_clear(mem, True)
            for b0 in range(0, plan.window, n_batch):
                chunk = toks[b0:b0 + n_batch]
                n_out = batch.fill(chunk, b0, lambda p: first <= p <= last)
                _decode(ctx, batch)
                if not n_out:
                    continue
                logits = np.ctypeslib.as_array(L.llama_get_logits(ctx), shape=(n_out, n_vocab))
                p0 = max(first, b0)  # position of the first output row
                at = w * plan.per_window + p0 - first
                nxt = toks_arr[np.arange(p0, p0 + n_out) + 1]
                scorer.score(logits, at, nxt, record, nll, kl, agree)
            log.take()  # nothing to keep from the decodes; bounds the records
            on_progress("eval", (w + 1) / plan.windows)
        eval_seconds = time.perf_counter() - t_eval
        pp, tg = _speed(ctx, mem, batch, plan, on_progress)
        probes = _retrieval(ctx, mem, batch, vocab, plan, on_progress)
    finally:
        scorer.close()
        batch.free()
        L.llama_free(ctx)

    mean_nll = float(nll.mean())
    sd = float(nll.std(ddof=1)) if plan.n_eval > 1 else 0.0
    ppl = math.exp(mean_nll)
    return PairResult(
        type_k=type_k,
        type_v=type_v,
        ppl=ppl,
        ppl_stderr=ppl * sd / math.sqrt(plan.n_eval),
        kl_mean=float(kl.mean()),
        kl_stderr=float(kl.std(ddof=1) / math.sqrt(plan.n_eval)) if plan.n_eval > 1 else 0.0,
        kl_p99=float(np.percentile(kl, 99)),
        kl_max=float(kl.max()),
        top1_agreement=float(agree.mean()),
        pp_tokens_per_s=median(pp),
        tg_tokens_per_s=median(tg),
        kv_bytes=kv,
        kv_k_bytes=kv_k,
        kv_v_bytes=kv_v,
        flash_attn=fa,
        seconds=round(time.perf_counter() - t_start, 3),
        pp_samples=tuple(round(x, 3) for x in pp),
        tg_samples=tuple(round(x, 3) for x in tg),
        eval_tokens=plan.windows * plan.window,
        eval_seconds=round(eval_seconds, 4),
        profile=profile(kl, agree, plan),
        retrieval=tuple(probes),
    )


def profile(kl: np.ndarray, agree: np.ndarray, plan: Plan) -> tuple[ProfileBin, ...]:
    """KL and top-1 by position in the window: ``plan.profile_bins`` equal slices of the
    scored positions, each pooled over every window."""
    if plan.profile_bins <= 0 or plan.per_window <= 0:
        return ()
    pos = np.tile(np.arange(plan.first, plan.window - 1), plan.windows)
    n_bins = min(plan.profile_bins, plan.per_window)
    edges = np.linspace(plan.first, plan.window - 1, n_bins + 1).round().astype(int)
    out = []
    for a, b in itertools.pairwise(edges.tolist()):
        sel = (pos >= a) & (pos < b)
        n = int(sel.sum())
        if n:
            out.append(ProfileBin(int(a), int(b), float(kl[sel].mean()),
                                  float(agree[sel].mean()), n))
    return tuple(out)


def _speed(ctx: Any, mem: Any, batch: Batch, plan: Plan, on_progress: Progress
           ) -> tuple[list[float], list[float]]:
    """Prompt and generation speed, the same way for every pair, the CLI and the window:
    one untimed warm-up, then ``speed_repeats`` timed repeats of each (median and spread are
    reported). Prompt: ``pp_tokens`` of the text from an empty cache, logits for the last only
    (as llama-bench's pp). Generation: ``n_gen`` single-token decodes after half a window of
    context, the text's own next tokens fed (no sampling); the generated cells are removed
    between repeats so each starts at the same depth."""
    import llama_cpp as L

    reps = plan.speed_repeats
    if reps <= 0:
        return [], []
    pp: list[float] = []
    toks = plan.window_tokens(0)
    n_pp = min(plan.pp_tokens, len(toks))
    for i in range(reps + 1):
        L.llama_memory_clear(mem, True)
        t = _prefill(ctx, batch, toks[:n_pp])
        if i:
            pp.append(n_pp / t if t > 0 else math.nan)
        on_progress("speed", (i + 1) / (2 * reps + 2))
    tg: list[float] = []
    depth = plan.first
    n_gen = min(plan.n_gen, len(toks) - depth)
    if n_gen <= 0:
        on_progress("speed", 1.0)
        return pp, tg
    L.llama_memory_clear(mem, True)
    _prefill(ctx, batch, toks[:depth])
    batch.fill([toks[depth]], depth, lambda p: True)  # warm-up: the single-token graph
    _decode(ctx, batch)
    for i in range(reps):
        if not L.llama_memory_seq_rm(mem, 0, depth, -1):  # recurrent state: start over
            L.llama_memory_clear(mem, True)
            _prefill(ctx, batch, toks[:depth])
        t = 0.0
        for j in range(n_gen):
            batch.fill([toks[depth + j]], depth + j, lambda p: True)
            t += _decode(ctx, batch)
        tg.append(n_gen / t if t > 0 else math.nan)
        on_progress("speed", (reps + 2 + i) / (2 * reps + 2))
    on_progress("speed", 1.0)
    return pp, tg


def _piece(vocab: Any, token: int) -> str:
    import llama_cpp as L

    buf = ctypes.create_string_buffer(64)
    n = L.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:max(0, n)].decode("utf-8", "replace")


def _retrieval(ctx: Any, mem: Any, batch: Batch, vocab: Any, plan: Plan,
               on_progress: Progress) -> list[NeedleProbe]:
    """Each probe: the prompt from an empty cache, then up to ANSWER_TOKENS greedy tokens."""
    import llama_cpp as L

    n_vocab = int(L.llama_vocab_n_tokens(vocab))
    out = []
    for i, needle in enumerate(plan.needles):
        L.llama_memory_clear(mem, True)
        toks = needle.tokens
        _prefill(ctx, batch, toks)
        pos = len(toks)
        answer = ""
        for _ in range(ANSWER_TOKENS):
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            tok = int(np.argmax(logits))
            if L.llama_vocab_is_eog(vocab, tok):
                break
            answer += _piece(vocab, tok)
            if "\n" in answer:
                break
            batch.fill([tok], pos, lambda p: True)
            _decode(ctx, batch)
            pos += 1
        answer = answer.split("\n")[0].strip()
        p = needle.prompt
        out.append(NeedleProbe(p.depth, needle.position, len(toks), p.secret, answer[:40],
                               answer_matches(answer, p.secret)))
        on_progress("retrieval", (i + 1) / len(plan.needles))
    return out


def _needles(model: Any, req: dict[str, Any], n_ctx_seq: int) -> list[NeedleTokens]:
    """The retrieval prompts, tokenized with the model's tokenizer, filling the context."""
    spec = req.get("retrieval")
    if not spec:
        return []
    filler = str(spec["filler"])
    budget = min(int(spec.get("n_ctx") or n_ctx_seq), n_ctx_seq) - ANSWER_TOKENS - 1
    depths = [float(d) for d in spec.get("depths", DEFAULT_DEPTHS)]
    seed = int(spec.get("seed", DEFAULT_SEED))
    try:
        made = needle_prompts(filler, budget, lambda t: len(tokenize(model, t)[0]),
                              depths, seed)
    except ValueError as exc:
        raise MeasureFailure(f"retrieval test: {exc}") from None
    out = []
    for p in made:
        toks = tokenize(model, p.text)[0]
        position = len(tokenize(model, p.text[:p.fact_at])[0])
        out.append(NeedleTokens(p, toks, position))
    return out


def measure(req: dict[str, Any], emit: Emit) -> None:
    """Run the whole request, emitting events; raises MeasureFailure for a fatal problem."""
    settings = Settings.from_dict(req["settings"])
    pairs = [(str(k), str(v)) for k, v in req["pairs"]]
    window = int(req["window"])
    max_windows = req.get("max_windows")
    n_threads = int(req.get("n_threads") or (
        default_threads() if settings.n_threads == AUTO_THREADS else settings.n_threads))
    repeat = bool(req.get("repeat_reference", False))
    sweep = req.get("sweep")
    threshold = QualityThreshold.from_dict(sweep) if sweep else None
    log = LogCapture()

    emit("progress", stage="load", fraction=0.0)
    model = load_model(str(req["model"]), settings, emit)
    tokens, add_bos, bos = tokenize(model, str(req["text"]))
    windows = len(tokens) // window
    if max_windows is not None:
        windows = min(windows, int(max_windows))
    if windows < 1:
        raise MeasureFailure(
            f"the text is {len(tokens)} tokens, shorter than one window of {window}: "
            "use a longer text or a smaller window"
        )
    score_from = req.get("score_from")
    score_from = None if score_from is None else int(score_from)
    if score_from is not None and not 0 <= score_from < window - 1:
        raise MeasureFailure(f"scoring from position {score_from} leaves nothing of a window "
                             f"of {window}")
    n_ctx_seq = settings.n_ctx if settings.kv_unified else settings.n_ctx // settings.n_parallel
    first = window // 2 if score_from is None else score_from
    plan = Plan(tokens, window, windows, add_bos, bos,
                n_gen=min(int(req.get("n_gen", 32)), window - first),
                score_from=score_from,
                profile_bins=int(req.get("profile_bins", DEFAULT_PROFILE_BINS)),
                speed_repeats=int(req.get("speed_repeats", DEFAULT_SPEED_REPEATS)),
                pp_tokens=min(int(req.get("pp_tokens", DEFAULT_WINDOW)), window),
                needles=_needles(model, req, n_ctx_seq))

    import llama_cpp as L

    n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)))
    full_max = int(req.get("kl_full_max_bytes", 512 * 1024 * 1024))
    reference = Reference(plan.n_eval, n_vocab, int(req.get("kl_topk", 64)), full_max)

    # The reference first; again right after when asked (its KL is then a real run-to-run
    # figure); then the others in the order given, or, for a sweep, as the sweep decides.
    runs: list[tuple[str, str]] = [REFERENCE_PAIR]
    if repeat:
        runs.append(REFERENCE_PAIR)
    if threshold is None:
        runs += [p for p in pairs if p != REFERENCE_PAIR]
    emit(
        "plan",
        text_tokens=len(tokens),
        window=window,
        windows=windows,
        tokens=plan.n_eval,
        n_vocab=n_vocab,
        kl_method=reference.method,
        reference_repeated=repeat,
        pairs=[list(p) for p in runs],
        n_threads=n_threads,
        score_from=plan.first,
        speed_repeats=plan.speed_repeats,
        retrieval_ctx=max((len(n.tokens) for n in plan.needles), default=None),
        sweep=threshold.text if threshold else "",
        work=plan.work(),
    )

    work = plan.work()
    per_pair = sum(work.values()) or 1.0
    done: dict[tuple[str, str], PairResult] = {}
    failed: set[tuple[str, str]] = set()
    recorded = False
    i = 0
    while True:
        if i >= len(runs):
            if threshold is None:
                break
            nxt = next_sweep_pair(done, failed, threshold)
            if nxt is None:
                break
            runs.append(nxt)
        k, v = runs[i]
        label = pair_label(k, v)
        # a sweep's total is not known in advance: at most the ladder's untried rungs
        total = len(runs) if threshold is None else \
            max(len(runs), len(runs) + _sweep_left(done, failed, runs[:i + 1]))

        def on_progress(phase: str, frac: float, i: int = i, label: str = label,
                        total: int = total) -> None:
            before = {"eval": 0.0, "speed": work["eval"],
                      "retrieval": work["eval"] + work["speed"]}[phase]
            in_pair = (before + work[phase] * frac) / per_pair
            emit("progress", stage=phase, pair=label, pair_index=i, pairs=total,
                 phase_fraction=round(frac, 4), pair_fraction=round(in_pair, 4),
                 fraction=round((i + in_pair) / total, 4))

        try:
            result = run_pair(model, settings, k, v, plan, reference, not recorded,
                              n_threads, log, on_progress)
        except PairFailed as exc:
            if not recorded:
                raise MeasureFailure(f"the f16 reference run failed: {exc}") from None
            emit("pair_failed", type_k=k, type_v=v, error=str(exc))
            failed.add((k, v))
            i += 1
            continue
        i += 1
        if not recorded:
            recorded = True
            if repeat:
                continue  # the repeat reports the f16 row
        done[result.pair] = result
        emit("pair", result=result.to_dict())
    L.llama_model_free(model)


def _sweep_left(done: dict[tuple[str, str], PairResult], failed: set[tuple[str, str]],
                started: list[tuple[str, str]]) -> int:
    """An upper bound of the rungs a sweep may still measure (for the progress only)."""
    left = [p for p in LADDER if p not in done and p not in failed and p not in started]
    return min(len(left), max(0, len(SWEEP_START) - len(set(started))) + 3)


def main() -> int:
    out = _take_stdout()
    emit = _emitter(out)
    line = sys.stdin.buffer.readline()
    try:
        req = decode(line)
    except ValueError as exc:
        emit("failed", message=f"bad request: {exc}")
        return 2
    _watch_stdin(sys.stdin.buffer)
    try:
        import llama_cpp
    except Exception as exc:  # not installed, or its shared library does not load
        from kvgui.core.install_hints import llama_cpp_hint

        emit("failed", message=llama_cpp_hint(exc))
        return 1

    emit("started", pid=os.getpid(), llama_cpp_version=llama_cpp.__version__)
    try:
        measure(req, emit)
    except MeasureFailure as exc:
        emit("failed", message=str(exc))
        return 1
    except (KeyError, TypeError, ValueError) as exc:
        emit("failed", message=f"bad request: {exc}")
        return 2
    emit("done")
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is said (stdout is flushed line by line): end here, without the interpreter's
    # teardown, which joins the scorer's threads and runs llama.cpp's exit handlers with its
    # thread pool; a teardown that stalls would keep the window waiting for a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
