"""Value-aware fuzzing of real GGUF headers through kvgui's model reader and estimate.

Random bytes mostly break a header where nothing reads it. Here each case starts from a real
header (catalog models of several kinds: dense, sliding window, MoE, MLA, hybrid, recurrent)
and changes what kvgui reads: a key's type or value (edge numbers, infinities, text, an array
of another length or element type), the length written before an array or a string (a lie),
the key and tensor counts, a tensor's shape, type, name or offset; or it duplicates, drops or
moves an entry. The file is written (sparse over the data) and goes through ``load_model``; a
model that loads is estimated with quantized and f16 caches on a GPU and the CPU, and
sometimes fitted.

The contract checked: every refusal is a GGUFError whose message is one line of at most
``MAX_MESSAGE`` printable characters; nothing else is raised; every case ends within its time
cap; the run stays within its memory cap (an address-space limit, so a blow-up is a
MemoryError here, not a machine brought down).

    python -m kvgui.testing.header_fuzz --cases 20000 --seed 7   # one JSON line of figures
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from kvgui.testing import raw_gguf as raw

MAX_MESSAGE = 600
BASE_MODELS = (
    "Llama-3.2-3B-Instruct Q4_K_M", "Gemma-3-12B-it Q4_K_M", "Qwen3-30B-A3B Q4_K_M",
    "DeepSeek-V2-Lite-Chat Q4_K_M", "LFM2-1.2B Q8_0", "Mamba-Codestral-7B-v0.1 Q4_K_M",
    "gpt-oss-20b MXFP4_MOE",
)
_INT_RANGES = {raw.UINT8: (0, 2**8 - 1), raw.INT8: (-(2**7), 2**7 - 1),
               raw.UINT16: (0, 2**16 - 1), raw.INT16: (-(2**15), 2**15 - 1),
               raw.UINT32: (0, 2**32 - 1), raw.INT32: (-(2**31), 2**31 - 1),
               raw.UINT64: (0, 2**64 - 1), raw.INT64: (-(2**63), 2**63 - 1)}
_FLOATS = (0.0, -0.0, 0.5, 1.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf"))
_TEXTS = ("", "0", "12", "abc", "llama", "\x1b[2J\x1b[31mFITS", "<b>x</b>", "é" * 3,
          "x" * 300)
_BIG = (2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)


class _Timeout(BaseException):
    """A case ran past its time cap (BaseException: no ``except Exception`` swallows it)."""


def base_headers() -> list[raw.Header]:
    """The real headers the cases start from, with vocabularies cut to 64 tokens."""
    from kvgui.core.model.catalog import find

    out = []
    for label in BASE_MODELS:
        h = find(label).build(vocab=False)
        md = dict(h.metadata)
        md["tokenizer.ggml.model"] = "gpt2"
        md["tokenizer.ggml.tokens"] = [f"t{i}" for i in range(64)]
        md["tokenizer.ggml.token_type"] = [1] * 64
        out.append(raw.from_metadata(md, h.tensors))
    return out


def _edge_int(rng: random.Random, vtype: int, near: Any) -> int:
    lo, hi = _INT_RANGES[vtype]
    picks = [lo, hi, 0, 1, 2, -1, *_BIG]
    if isinstance(near, int) and not isinstance(near, bool):
        picks += [near - 1, near + 1, near * 2, near * 1000, -near]
    return min(max(rng.choice(picks), lo), hi)


def _random_value(rng: random.Random, near: Any) -> tuple[int, Any]:
    vtype = rng.choice([*_INT_RANGES, raw.FLOAT32, raw.FLOAT64, raw.BOOL, raw.STRING])
    if vtype in _INT_RANGES:
        return vtype, _edge_int(rng, vtype, near)
    if vtype in (raw.FLOAT32, raw.FLOAT64):
        return vtype, rng.choice(_FLOATS)
    if vtype == raw.BOOL:
        return vtype, rng.random() < 0.5
    return vtype, rng.choice(_TEXTS)


def _random_array(rng: random.Random, n_layer: int, near: Any) -> tuple[int, list[Any]]:
    etype = rng.choice([raw.UINT32, raw.INT32, raw.BOOL, raw.FLOAT32, raw.UINT8, raw.UINT64,
                        raw.STRING])
    length = rng.choice([0, 1, max(n_layer - 1, 0), n_layer, n_layer, n_layer + 1, 513, 5000])
    values: list[Any]
    if etype in _INT_RANGES:
        base = near if isinstance(near, int) and not isinstance(near, bool) else 8
        lo, hi = _INT_RANGES[etype]
        values = [min(max(base, lo), hi)] * length
        for _ in range(rng.choice([0, 1, 2])):
            if values:
                values[rng.randrange(length)] = _edge_int(rng, etype, base)
    elif etype == raw.FLOAT32:
        values = [rng.choice(_FLOATS) for _ in range(length)]
    elif etype == raw.BOOL:
        values = [rng.random() < 0.5 for _ in range(length)]
    else:
        values = [rng.choice(_TEXTS) for _ in range(length)]
    return etype, values


def mutate(rng: random.Random, h: raw.Header) -> tuple[raw.Header, list[str]]:
    """A copy of ``h`` with one to three value-aware changes, and what they were."""
    h = h.copy()
    arch = next((e.value for e in h.entries if e.key == "general.architecture"), "")
    n_layer = next((e.value for e in h.entries if e.key == f"{arch}.block_count"), 8)
    n_layer = n_layer if isinstance(n_layer, int) else 8
    done: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not h.entries:
            break
        read = [i for i, e in enumerate(h.entries)  # the keys kvgui's model reader reads
                if e.key.startswith((f"{arch}.", "general.", "split.", "tokenizer.ggml.tokens"))]
        op = rng.choices(
            ["value", "array", "array_lie", "string_lie", "dup", "drop", "move", "add_key",
             "tensor_shape", "tensor_type", "tensor_offset", "tensor_name", "tensor_dims",
             "tensor_dup", "counts", "version", "truncate", "alignment", "split"],
            weights=[14, 8, 4, 3, 3, 4, 2, 4, 6, 3, 3, 3, 2, 2, 2, 1, 2, 2, 2])[0]
        i = rng.choice(read) if read and rng.random() < 0.85 else rng.randrange(len(h.entries))
        e = h.entries[i]
        if op == "value":
            vtype, value = _random_value(rng, e.value)
            h.entries[i] = raw.Entry(e.key, vtype, value)
            done.append(f"{e.key} = {raw.TYPE_NAMES[vtype]} {value!r:.30}")
        elif op == "array":
            etype, values = _random_array(rng, n_layer, e.value)
            h.entries[i] = raw.Entry(e.key, raw.ARRAY, values, etype)
            done.append(f"{e.key} = arr[{raw.TYPE_NAMES[etype]}] x {len(values)}")
        elif op == "array_lie":
            arrays = [j for j, x in enumerate(h.entries) if x.vtype == raw.ARRAY]
            if arrays:
                j = rng.choice(arrays)
                real = len(h.entries[j].value)
                lie = rng.choice([real + 1, max(real - 1, 0), 0, 2**32, 2**62, 2**64 - 1])
                h.entries[j] = h.entries[j].clone(count=lie)
                done.append(f"{h.entries[j].key} array length {real} written as {lie}")
        elif op == "string_lie":
            strings = [j for j, x in enumerate(h.entries) if x.vtype == raw.STRING]
            if strings:
                j = rng.choice(strings)
                real = len(str(h.entries[j].value).encode())
                lie = rng.choice([real + 1, max(real - 1, 0), 2**63, 2**64 - 1, 1 << 30])
                h.entries[j] = h.entries[j].clone(count=lie)
                done.append(f"{h.entries[j].key} string length {real} written as {lie}")
        elif op == "dup":
            h.entries.insert(rng.randrange(len(h.entries) + 1), e.clone())
            done.append(f"duplicate {e.key}")
        elif op == "drop":
            del h.entries[i]
            done.append(f"drop {e.key}")
        elif op == "move":
            h.entries.append(h.entries.pop(i))
            done.append(f"move {e.key} last")
        elif op == "add_key":
            suffix = rng.choice(["attention.key_length", "attention.value_length",
                                 "attention.sliding_window", "expert_count",
                                 "expert_used_count", "nextn_predict_layers",
                                 "attention.head_count_kv", "ssm.inner_size",
                                 "full_attention_interval", "attention.sliding_window_pattern",
                                 "attention.key_length_mla", "vocab_size"])
            key = f"{arch}.{suffix}"
            vtype, value = _random_value(rng, 0)
            if rng.random() < 0.6:
                vtype, value = raw.UINT32, _edge_int(rng, raw.UINT32, rng.choice([0, 1, 64]))
            h.drop(key).entries.append(raw.Entry(key, vtype, value))
            done.append(f"add {key} = {raw.TYPE_NAMES[vtype]} {value!r:.30}")
        elif op.startswith("tensor") and h.tensors:
            k = rng.randrange(len(h.tensors))
            t = h.tensors[k]
            if op == "tensor_shape":
                dim = rng.randrange(len(t.shape))
                shape = list(t.shape)
                shape[dim] = rng.choice([0, 1, 3, 2**31, 2**32 + 1, 2**63, 2**64 - 1])
                t.shape = tuple(shape)
                done.append(f"tensor {t.name} shape {t.shape}")
            elif op == "tensor_type":
                t.type_id = rng.choice([0, 1, 2, 8, 12, 30, 39, 4, 5, 31, 33, 36, 45, 2**32 - 1])
                done.append(f"tensor {t.name} type {t.type_id}")
            elif op == "tensor_offset":
                t.offset = rng.choice([0, 1, 31, 32, 2**40, 2**63, 2**64 - 1])
                done.append(f"tensor {t.name} offset {t.offset}")
            elif op == "tensor_name":
                other = rng.choice(h.tensors).name
                t.name = rng.choice([other, "", "x" * 64, "blk.0.\x1b[2J", "blk.999.attn_k"])
                done.append(f"tensor {k} renamed {t.name!r:.30}")
            elif op == "tensor_dims":
                t.shape = rng.choice([(), (*t.shape, 1, 1, 1, 1)])[:5]
                done.append(f"tensor {t.name} dims {len(t.shape)}")
            else:
                h.tensors.insert(rng.randrange(len(h.tensors) + 1), raw.Tensor(
                    t.name, t.shape, t.type_id))
                done.append(f"duplicate tensor {t.name}")
        elif op == "counts":
            real = len(h.entries) if rng.random() < 0.5 else len(h.tensors)
            lie = rng.choice([real + 1, max(real - 1, 0), real + 1000, 2**60, 2**64 - 1])
            if rng.random() < 0.5:
                h.n_kv = lie
            else:
                h.n_tensors = lie
            done.append(f"counts written as {lie}")
        elif op == "version":
            h.version = rng.choice([0, 1, 2, 4, 2**32 - 1])
            done.append(f"version {h.version}")
        elif op == "truncate":
            done.append(f"file cut by {rng.choice([1, 4096, 1 << 20])} bytes")
        elif op == "alignment":
            pick: tuple[int, Any] = rng.choice([
                (raw.UINT32, 0), (raw.UINT32, 3), (raw.UINT32, 64), (raw.UINT64, 32),
                (raw.STRING, "32"), (raw.UINT32, 2**31)])
            vtype, value = pick
            h.drop("general.alignment").entries.append(
                raw.Entry("general.alignment", vtype, value))
            if vtype == raw.UINT32 and value and not value & (value - 1):
                h.alignment = int(value)
            done.append(f"general.alignment = {raw.TYPE_NAMES[vtype]} {value}")
        elif op == "split":
            vtype, value = rng.choice([(raw.UINT16, 2), (raw.UINT16, 0), (raw.UINT32, 2),
                                       (raw.UINT16, 65535)])
            h.drop("split.count").entries.append(raw.Entry("split.count", vtype, value))
            done.append(f"split.count = {raw.TYPE_NAMES[vtype]} {value}")
    return h, done


def _check_message(exc: BaseException) -> str | None:
    """Why a refusal's message breaks the contract, or None."""
    text = str(exc)
    if "\n" in text or "\r" in text:
        return "message spans lines"
    if len(text) > MAX_MESSAGE:
        return f"message of {len(text)} characters"
    if any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in text):
        return "message holds control characters"
    return None


def _estimate_all(model: Any, rng: random.Random) -> None:
    from kvgui.core.config.settings import FlashAttn, Settings
    from kvgui.core.devices.device_budget import DeviceBudget, cpu
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.memory.fit import max_context

    devices = [DeviceBudget("GPU", 24 << 30), cpu(64 << 30)]
    for s in (Settings(type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON, n_parallel=2),
              Settings(n_ctx=rng.choice([256, 4096, 131072]), n_gpu_layers=rng.choice([-1, 3]))):
        est = estimate(model, s, devices)
        for d in est.devices:
            for part in (d.weights, d.kv_k, d.kv_v, d.compute, d.output, d.state):
                if not isinstance(part, int) or part < 0:
                    raise AssertionError(f"{d.name}: a size of {part!r}")
    if rng.random() < 0.1:
        max_context(model, Settings(), devices)


def run(cases: int, seed: int, case_seconds: float, folder: Path) -> dict[str, Any]:
    from kvgui.core.gguf.reader import GGUFError
    from kvgui.core.model.info import load_model

    rng = random.Random(seed)
    bases = base_headers()
    results: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    slowest = 0.0

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    # The cap is CPU time (ITIMER_PROF), not wall time: what it guards against is a loop that
    # spins on a header value, which burns CPU; a machine shared with other jobs (CI, the
    # test suite's own workers) must not turn a 0.5 s estimate into a "hang".
    signal.signal(signal.SIGPROF, on_alarm)
    path = folder / "case.gguf"
    start, cpu_start = time.perf_counter(), time.process_time()
    for n in range(cases):
        h, what = mutate(rng, rng.choice(bases))
        try:
            data = raw.data_bytes(h)
            raw.write(h, path, data=data if data < 1 << 40 else 1 << 20)  # sparse either way
        except (struct.error, OverflowError, ValueError, TypeError):
            results["unwritable"] += 1  # a change the file format cannot even hold
            continue
        cut = next((int(c.split()[3]) for c in what if c.startswith("file cut by")), 0)
        if cut:
            os.truncate(path, max(path.stat().st_size - cut, 0))
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_PROF, case_seconds)
        try:
            model = load_model(path)
            _estimate_all(model, rng)
            results["loaded"] += 1
        except GGUFError as exc:
            results["refused"] += 1
            reasons[exc.reason.split(":")[0][:50]] += 1
            bad = _check_message(exc)
            if bad:
                failures.append({"case": n, "changes": what, "error": f"{bad}: {exc!s:.300}"})
        except _Timeout:
            failures.append({"case": n, "changes": what, "error": f"over {case_seconds} s of CPU"})
        except MemoryError:
            failures.append({"case": n, "changes": what, "error": "MemoryError"})
        except Exception as exc:
            failures.append({"case": n, "changes": what,
                             "error": f"{type(exc).__name__}: {exc!s:.300}",
                             "where": traceback.format_exc(limit=-3)[-600:]})
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        slowest = max(slowest, time.perf_counter() - t0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"cases": cases, "seed": seed, "seconds": round(seconds, 2),
            "per_second": round(cases / seconds, 1) if seconds else None,
            "per_cpu_second": round(cases / cpu, 1) if cpu else None,
            "slowest_case_s": round(slowest, 3), **results,
            "top_refusals": reasons.most_common(12), "failures": failures[:20],
            "n_failures": len(failures)}


def _cap_memory(extra_mib: int) -> int | None:
    """Limit this process's address space to what it uses now plus ``extra_mib``."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + (extra_mib << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return limit
    except (ImportError, OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--case-seconds", type=float, default=5.0)
    p.add_argument("--memory-mib", type=int, default=1024,
                   help="address space allowed beyond what the process uses at the start")
    args = p.parse_args(argv)
    import kvgui.core.memory.estimate
    import kvgui.core.model.catalog  # noqa: F401 - both imported before the memory cap

    limit = _cap_memory(args.memory_mib)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="kvgui-fuzz-", dir=shm) as tmp:
        out = run(args.cases, args.seed, args.case_seconds, Path(tmp))
    out["memory_cap_mib"] = (limit >> 20) if limit else None
    print(json.dumps(out))
    return 1 if out["n_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
