"""Tensor buffer type overrides (-ot, --cpu-moe, --n-cpu-moe) as llama.cpp applies them.

llama_model_loader::create_tensor (src/llama-model-loader.cpp, buft_for_tensor) walks the
overrides in order for every weight it creates -- the input layer's, the output layer's and
each block's alike -- and takes the first whose pattern ``std::regex_search`` finds in the
tensor's name (a std::regex, ECMAScript grammar, built afresh for each tensor):

- an override to the CPU's buffer type (``ggml_backend_cpu_buffer_type()``, named "CPU")
  places the weight as a CPU weight: ``select_weight_buft`` over the CPU list, so a GPU's host
  buffer, then CPU_REPACK/AMX where they take the weight, then plain CPU (host_buffers.py);
  with mmap a host buffer becomes the mapped file;
- an override to any other buffer type puts it there, unchecked;
- no match: the weight's layer decides, as without overrides.

The buffer type names are those common/arg.cpp's parse_tensor_buffer_overrides lists: the
default buffer type of every registered device ("CPU", "CUDA0", "Vulkan1",
"RPC0[host:port]" ...); any other name stops llama-cli at the command line ("unknown buffer
type"). A pattern std::regex rejects makes the model load fail. ``resolve`` turns the
Settings' overrides into compiled Python patterns with a device slot, and says (findings)
what llama.cpp would refuse or ignore.

Pure core: no llama_cpp, no I/O.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kvgui.core.config.settings import Settings, tensor_overrides
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.memory import findings as fnd
from kvgui.core.memory.findings import Code, Finding

CPU_SLOT = -1  # the estimate's spelling of "the host" (estimate._layer_devices)
CPU_BUFT_NAME = "CPU"

# GPU backends and the prefix of their buffer type names, numbered per backend from 0
# (ggml-cuda "CUDA%d", ggml-vulkan "Vulkan%d", ggml-sycl "SYCL%d", HIP builds of ggml-cuda
# "ROCm%d", MUSA "MUSA%d", CANN "CANN%d", OpenCL "OpenCL"... ) for GPUs whose DeviceBudget
# does not name its buffer type.
GPU_BUFT_PREFIXES = ("CUDA", "ROCm", "MUSA", "Vulkan", "SYCL", "CANN")
# ggml-metal and ggml-opencl have one device and name its buffer type without a number
SINGLE_GPU_BUFTS = ("Metal", "OpenCL")


class RegexError(ValueError):
    """A pattern std::regex (ECMAScript) would not compile: the message says why."""


# --- ECMAScript regular expressions as std::regex reads them ------------------------------

_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "w": "\\w",
    "xdigit": "0-9A-Fa-f", "d": "0-9", "s": " \\t\\n\\r\\f\\v",
}
_QUANTIFIER_BRACE = re.compile(r"\{[0-9]+(,[0-9]*)?\}")


def to_python(pattern: str) -> str:
    """The Python ``re`` spelling of an ECMAScript pattern, or RegexError where std::regex
    (libstdc++, ECMAScript) would throw.

    The two grammars agree on what -ot patterns use (literals, ``.``, classes, ``\\d \\w \\s
    \\b``, groups, ``(?:``, lookahead, alternation, the quantifiers, back references). This
    refuses what only Python reads (named groups, lookbehind, inline flags, comments, atomic
    groups: any ``(?`` but ``(?:``, ``(?=``, ``(?!``; a ``{`` that opens no well-formed
    ``{n}``, ``{n,}``, ``{n,m}``, which std::regex throws on and Python reads literally) and
    translates what the two read differently: ``[[:digit:]]``-style classes, ``[]`` (never
    matches) and ``[^]`` (any character), ``\\cX``, ``\\0``, an escaped letter that is no
    ECMAScript escape (the letter itself: ``\\A`` is "A", ``\\a`` "a"), and a quantifier
    after a quantifier (``a*+`` is ``(a*)+`` in ECMAScript, possessive in Python 3.11).
    tests/core/test_tensor_overrides.py checks it against libstdc++'s std::regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    groups: list[int] = []  # where each open group starts in ``out``
    atom = -1  # where the last atom (what a quantifier repeats) starts in ``out``
    quantified = False  # the last atom already has its quantifier
    can_be_lazy = False  # ... and a "?" now makes it lazy
    while i < n:
        c = pattern[i]
        start = len(out)
        if c in "*+?{":
            if c == "{":
                m = _QUANTIFIER_BRACE.match(pattern, i)
                if m is None:
                    raise RegexError(f"a '{{' at {i} opens no {{n}}, {{n,}} or {{n,m}}")
                text, i = m.group(), m.end()
            else:
                text, i = c, i + 1
            if atom < 0:
                raise RegexError(f"{text!r} at {i - len(text)} repeats nothing")
            if quantified and text == "?" and can_be_lazy:
                out.append("?")  # lazy: ECMAScript and Python alike
                can_be_lazy = False
                continue
            if quantified:  # ECMAScript repeats the repeated atom
                out[atom:] = ["(?:", *out[atom:], ")"]
            out.append(text)
            quantified = can_be_lazy = True
            continue
        quantified = False
        if c == "\\":
            text, i = _escape(pattern, i)
            out.append(text)
            atom = start
        elif c == "[":
            i, text = _bracket(pattern, i)
            out.append(text)
            atom = start
        elif c == "(":
            if pattern.startswith("(?", i):
                kind = pattern[i + 2:i + 3]
                if kind not in (":", "=", "!"):
                    shown = pattern[i:i + 4]
                    raise RegexError(f"{shown!r}: only (?: (?= (?! groups are ECMAScript "
                                     "(no named groups, lookbehind or inline flags)")
                out.append(pattern[i:i + 3])
                i += 3
            else:
                out.append(c)
                i += 1
            groups.append(start)
            atom = -1
        elif c == ")":
            if not groups:
                raise RegexError(f"a ')' at {i} closes no group")
            out.append(c)
            i += 1
            atom = groups.pop()
        elif c in "|^$":
            out.append(c)
            i += 1
            atom = -1
        else:
            out.append(re.escape(c) if c in "}]" else c)
            i += 1
            atom = start
    return "".join(out)


# ECMAScript's letter escapes (ECMA-262 CharacterClassEscape, ControlEscape, \b \B, \x \u);
# any other escaped letter is the letter itself (libstdc++'s _M_eat_escape_ecma), where Python
# would refuse it or read another escape (\a, \N, \U)
_ECMA_LETTER_ESCAPES = frozenset("dDsSwWbBfnrtvxu")


def _escape(pattern: str, i: int) -> tuple[str, int]:
    """The escape at ``i`` (a backslash): (its Python text, the index after it)."""
    if i + 1 >= len(pattern):
        raise RegexError("the pattern ends in a lone backslash")
    e = pattern[i + 1]
    if e == "c" and i + 2 < len(pattern) and pattern[i + 2].isascii() \
            and pattern[i + 2].isalpha():
        return f"\\x{ord(pattern[i + 2]) % 32:02x}", i + 3
    if e == "0" and not (i + 2 < len(pattern) and pattern[i + 2].isdigit()):
        return "\\x00", i + 2
    if e.isascii() and e.isalpha() and e not in _ECMA_LETTER_ESCAPES:
        return e, i + 2
    return pattern[i:i + 2], i + 2


def _bracket(pattern: str, start: int) -> tuple[int, str]:
    """A bracket expression from ``start`` ('['): (index after it, its Python text)."""
    i = start + 1
    out = ["["]
    if i < len(pattern) and pattern[i] == "^":
        out.append("^")
        i += 1
    first = True
    while i < len(pattern):
        c = pattern[i]
        if c == "]" and not first:
            out.append("]")
            return i + 1, "".join(out)
        if c == "]":  # ECMAScript: "[]" is an empty class, "[^]" any character
            return i + 1, "[\\s\\S]" if out[-1] == "^" else "(?!)"
        if c == "[" and i + 1 < len(pattern) and pattern[i + 1] in ":=.":
            kind = pattern[i + 1]
            end = pattern.find(kind + "]", i + 2)
            if end < 0:
                raise RegexError(f"an unterminated '[{kind}' in a bracket expression")
            name = pattern[i + 2:end]
            if kind != ":" or name not in _POSIX_CLASSES:
                raise RegexError(f"'[{kind}{name}{kind}]' is not a class std::regex knows")
            out.append(_POSIX_CLASSES[name])
            i = end + 2
        elif c == "\\":
            text, i = _escape(pattern, i)
            out.append(text)
        elif c in "[&~|":
            out.append("\\" + c)  # literal (Python reads "[", "&&", "~~", "||" as set syntax)
            i += 1
        else:
            out.append(c)
            i += 1
        first = False
    raise RegexError("a '[' without its ']'")


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled pattern (searched, as std::regex_search does), or RegexError."""
    try:
        with warnings.catch_warnings():  # "possible nested set" & co.: the text is translated
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(to_python(pattern))
    except re.error as exc:
        raise RegexError(str(exc)) from None


# --- buffer type names and where they are -------------------------------------------------

def buffer_type_slots(gpus: Sequence[DeviceBudget]) -> dict[str, int]:
    """llama.cpp's buffer type names of these devices -> their slot (the GPU's index, or
    CPU_SLOT): a DeviceBudget's own ``buft`` where it names one (an RPC device's
    "RPC0[host:port]"), else the names its index has in each GPU backend ("CUDA1",
    "Vulkan1" ... counted over the GPUs without their own name), plus "CPU"."""
    names = {CPU_BUFT_NAME: CPU_SLOT}
    for i, g in enumerate(gpus):
        if g.buft:
            names.setdefault(g.buft, i)
    local = [i for i, g in enumerate(gpus) if not g.buft]
    for k, i in enumerate(local):
        for prefix in GPU_BUFT_PREFIXES:
            names.setdefault(f"{prefix}{k}", i)
        if k == 0:
            for single in SINGLE_GPU_BUFTS:
                names.setdefault(single, i)
    return names


@dataclass(frozen=True)
class Resolved:
    """The overrides llama.cpp applies, in its order: (compiled pattern, slot, as written),
    and the slot each of the model's weights gets from them (``assigned``, by name).

    Entries llama.cpp would refuse are left out (their findings say why: the settings are
    refused as a whole), and so are those that match none of the model's weights (--n-cpu-moe
    999 is 999 patterns): they place nothing, though any override at all still turns
    pipeline parallelism off (``given``: llama_model::has_tensor_overrides)."""

    rules: tuple[tuple[re.Pattern[str], int, str], ...]
    findings: tuple[Finding, ...]
    assigned: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    given: bool = False

    def slot(self, name: str, default: int) -> int:
        """The slot of the weight ``name``: the first matching rule's, else ``default``."""
        found = self.rule_slot(name)
        return default if found is None else found

    def rule_slot(self, name: str) -> int | None:
        """The slot of the first rule matching ``name``, None when none does."""
        if name in self.assigned:
            return self.assigned[name]
        for regex, slot, _ in self.rules:
            if regex.search(name):
                return slot
        return None

    @property
    def layout_rules(self) -> tuple[tuple[str, int], ...]:
        """(Python pattern, slot) for the compute graph's scheduler (reserve.Layout)."""
        return tuple((regex.pattern, slot) for regex, slot, _ in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)


NONE = Resolved((), ())


def resolve(s: Settings, gpus: Sequence[DeviceBudget], tensor_names: Iterable[str],
            *, n_expert: int) -> Resolved:
    """The Settings' overrides (override_tensor, then n_cpu_moe's) against these devices and
    this model's weights (``tensor_names``, as llama.cpp names them), with the findings."""
    overrides = tensor_overrides(s)
    if not overrides:
        return NONE
    slots = buffer_type_slots(gpus)
    names = tuple(tensor_names)
    found: list[Finding] = []
    rules: list[tuple[re.Pattern[str], int, str]] = []
    for pattern, buft in s.override_tensor:
        shown = f"-ot {pattern}={buft}"
        try:
            regex = compile_pattern(pattern)
        except RegexError as exc:
            found.append(fnd.refusal(
                Code.OT_BAD_REGEX,
                f"{shown}: llama.cpp cannot compile the pattern ({exc}); std::regex throws "
                "and the model does not load", field="override_tensor",
                fix={"override_tensor": _without(s, pattern, buft)}))
            continue
        if buft not in slots:
            known = _known_names(gpus)
            found.append(fnd.refusal(
                Code.OT_UNKNOWN_BUFFER_TYPE,
                f"{shown}: no device here has the buffer type {buft!r} (llama.cpp stops at "
                f"the command line: 'unknown buffer type'); these devices have {known}",
                field="override_tensor", fix={"override_tensor": _without(s, pattern, buft)}))
            continue
        rules.append((regex, slots[buft], shown))
        if names and not any(regex.search(t) for t in names):
            found.append(fnd.note(Code.OT_NO_MATCH,
                                  f"{shown} matches no tensor of this model: it changes nothing"))
    moe = overrides[len(s.override_tensor):]
    if moe:
        flag = "--cpu-moe" if s.n_cpu_moe < 0 else f"--n-cpu-moe {s.n_cpu_moe}"
        if not n_expert:
            found.append(fnd.note(
                Code.CPU_MOE_NO_EXPERTS,
                f"{flag}: this model has no experts, so llama.cpp matches no tensor and "
                "ignores it"))
        for pattern, _ in moe:
            rules.append((compile_pattern(pattern), CPU_SLOT, flag))
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for name in names:
        for k, (regex, slot, _) in enumerate(rules):
            if regex.search(name):
                assigned[name] = slot
                used.add(k)
                break
    if names:
        rules = [r for k, r in enumerate(rules) if k in used]
    return Resolved(tuple(rules), tuple(found), MappingProxyType(assigned), given=True)


def _known_names(gpus: Sequence[DeviceBudget]) -> str:
    """The buffer type names of these devices, for a message: each GPU's own, or CUDA<k>
    with the other backends' spelling of the same index."""
    names = [CPU_BUFT_NAME]
    k = 0
    for g in gpus:
        if g.buft:
            names.append(g.buft)
        else:
            names.append(f"CUDA{k} (or {', '.join(p + str(k) for p in GPU_BUFT_PREFIXES[1:])}"
                         " by its backend)")
            k += 1
    return ", ".join(names)


def _without(s: Settings, pattern: str, buft: str) -> tuple[tuple[str, str], ...]:
    return tuple(o for o in s.override_tensor if o != (pattern, buft))
