"""llama.cpp's own ``llama-perplexity --kl-divergence`` on a text, with the settings of a
``kvgui measure`` request: the reference its figures are checked against (tests) and timed
against (benchmarks/measure_throughput.py).

The f16 run writes the base log-probabilities (``--kl-divergence-base``), each other K/V pair
is compared with them (``--kl-divergence``), exactly as llama.cpp's perplexity documentation
describes. Same windows: ``-c`` = the window, ``--chunks`` = the windows, ``-b`` = the window
(one sequence per decode, as kvgui's worker decodes), the same threads, flash attention and
repack choice.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kvgui.core.config.settings import AUTO_THREADS, FlashAttn, Settings
from kvgui.testing.llama_tools import LlamaTools


@dataclass(frozen=True)
class PerplexityResult:
    type_k: str
    type_v: str
    ppl: float
    ppl_ratio: float | None  # PPL(Q)/PPL(base); None for the base run
    kl_mean: float | None
    same_top: float | None  # fraction
    eval_seconds: float  # from "computing over N chunks" to the process's end
    eval_tokens: int  # chunks * n_ctx

    @property
    def tokens_per_s(self) -> float:
        return self.eval_tokens / self.eval_seconds


def _args(model: Path, text: Path, settings: Settings, window: int, chunks: int,
          type_k: str, type_v: str) -> list[str]:
    fa = FlashAttn.ON if settings.flash_attn is FlashAttn.AUTO else settings.flash_attn
    args = ["-m", str(model), "-f", str(text), "-c", str(window), "--chunks", str(chunks),
            "-b", str(window), "-fa", fa.value, "-ctk", type_k, "-ctv", type_v]
    if settings.n_threads != AUTO_THREADS:
        args += ["-t", str(settings.n_threads)]
    if not settings.repack:
        args.append("-nr")
    return args


_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def _grab(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _run(argv: list[str], timeout: float) -> tuple[str, float]:
    """Run, returning stderr+stdout and the seconds from the start of the evaluation (the
    "computing over" line) to the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    lines: list[str] = []
    started: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not started and re.search(r"(computing|calculating perplexity) over", line):
                started.append(time.perf_counter())
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    end = time.perf_counter()
    reader.join(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    out = "".join(lines)
    if rc != 0:
        tail = "\n".join(out.splitlines()[-12:])
        raise RuntimeError(f"llama-perplexity exited with {rc}:\n{tail}")
    if not started:
        raise RuntimeError("llama-perplexity never started its evaluation:\n" + out[-2000:])
    return out, end - started[0]


def kl_divergence(tools: LlamaTools, model: Path, text: Path, settings: Settings,
                  window: int, chunks: int, pairs: list[tuple[str, str]],
                  timeout: float = 600.0) -> dict[tuple[str, str], PerplexityResult]:
    """The f16 base run, then one ``--kl-divergence`` run per other pair."""
    out: dict[tuple[str, str], PerplexityResult] = {}
    n_tok = chunks * window
    with tempfile.TemporaryDirectory(prefix="kvgui-kld-") as tmp:
        base = Path(tmp) / "base.kld"
        argv = [str(tools.perplexity), *_args(model, text, settings, window, chunks, "f16",
                                              "f16"), "--kl-divergence-base", str(base)]
        log, secs = _run(argv, timeout)
        ppl = _grab(r"Final estimate: PPL = " + _NUM, log)
        if ppl is None:
            raise RuntimeError("no final estimate in llama-perplexity's output:\n" + log[-2000:])
        out[("f16", "f16")] = PerplexityResult("f16", "f16", ppl, None, None, None, secs, n_tok)
        for k, v in pairs:
            if (k, v) == ("f16", "f16"):
                continue
            argv = [str(tools.perplexity), *_args(model, text, settings, window, chunks, k, v),
                    "--kl-divergence-base", str(base), "--kl-divergence"]
            log, secs = _run(argv, timeout)
            q = _grab(r"Mean PPL\(Q\)\s*:\s*" + _NUM, log)
            ratio = _grab(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + _NUM, log)
            kl = _grab(r"Mean\s+KLD:\s*" + _NUM, log)
            top = _grab(r"Same top p:\s*" + _NUM, log)
            if q is None or ratio is None or top is None:
                raise RuntimeError("no KL statistics in llama-perplexity's output:\n"
                                   + log[-2000:])
            out[(k, v)] = PerplexityResult(k, v, q, ratio, kl, top / 100, secs, n_tok)
    return out
