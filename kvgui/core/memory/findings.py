"""What llama.cpp would say about a model and settings, as data: refusals, warnings, notes.

Every surface (the window's controls and table, the CLI's tables and exit status, export,
launch) reads these objects; none of them looks at the wording. A refusal carries the one
Settings change that makes llama.cpp accept the settings (``fix``), and the setting it is
about (``field``), so a control can mark itself and a "Fix" button can apply it.

The rules are llama.cpp's own, from llama_init_from_model / llama_context's constructor
(src/llama-context.cpp) and llama_kv_cache's (src/llama-kv-cache.cpp); see ``check``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import Enum
from types import MappingProxyType
from typing import Any


class Severity(str, Enum):
    REFUSAL = "refusal"  # llama.cpp fails to create the context (or aborts)
    WARNING = "warning"  # it runs, but the user should know
    NOTE = "note"  # how the figures were made (not verified, estimated …)


class Code(str, Enum):
    """Stable identifiers: tests, the window and scripts (--json) match on these."""

    # refusals
    V_QUANT_NEEDS_FA = "v-quant-needs-flash-attn"
    MLA_SAME_TYPES = "mla-same-k-v-types"
    K_BLOCK_SIZE = "k-block-size"
    V_BLOCK_SIZE = "v-block-size"
    LLAMA_ABORTS = "llama-aborts"
    AMX_MLA_ABORTS = "amx-mla-aborts"  # an MLA weight in the AMX buffer: GGML_ASSERT
    OT_BAD_REGEX = "override-tensor-bad-regex"  # std::regex throws: the model does not load
    OT_UNKNOWN_BUFFER_TYPE = "override-tensor-unknown-buffer-type"  # arg.cpp refuses it
    MAIN_GPU_INVALID = "main-gpu-invalid"  # -sm none with -mg past the devices: load fails
    # warnings
    BEYOND_TRAINED = "beyond-trained-context"
    SWA_FULL = "swa-full"
    NO_KV_CACHE = "no-kv-cache"
    FA_FORCED_OFF = "flash-attn-forced-off"
    PARTIAL_OFFLOAD = "partial-offload"
    MODEL = "model"  # a warning about the model itself (unknown architecture, …)
    AMX_3D_PACKING = "amx-3d-packing"  # AMX packs one slice of a 3-D weight: wrong output
    # notes
    COMPUTE_NOT_VERIFIED = "compute-not-verified"
    HOST_MAPPED_COPIES = "host-mapped-copies"  # mmap + repacked weights: both in RAM at first
    HOST_BUFFERS_UNMODELED = "host-buffers-unmodeled"  # KleidiAI & co.: not followed
    OT_NO_MATCH = "override-tensor-no-match"  # an -ot pattern no weight's name matches
    CPU_MOE_NO_EXPERTS = "cpu-moe-no-experts"  # --n-cpu-moe on a dense model: ignored
    CPU_OVERRIDE_MMAP = "cpu-override-with-mmap"  # llama.cpp's "consider --load-mode none"
    SPLIT_ROW_UNMODELED = "split-row-unmodeled"  # -sm row: matrices split by rows, not followed
    RPC_MEMORY_UNKNOWN = "rpc-memory-unknown"  # the split by free memory of an RPC device


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Finding:
    code: Code
    severity: Severity
    message: str
    field: str | None = None  # the Settings field this is about, for the controls
    # the Settings.replace(**fix) that removes it (refusals); empty for the rest
    fix: Mapping[str, Any] = dc_field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    @property
    def is_refusal(self) -> bool:
        return self.severity is Severity.REFUSAL

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code.value, "severity": self.severity.value,
                               "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.fix:
            out["fix"] = {k: getattr(v, "value", v) for k, v in self.fix.items()}
        return out


def refusal(code: Code, message: str, *, field: str | None = None,
            fix: Mapping[str, Any] | None = None) -> Finding:
    return Finding(code, Severity.REFUSAL, message, field,
                   MappingProxyType(dict(fix)) if fix else _EMPTY)


def warning(code: Code, message: str, *, field: str | None = None) -> Finding:
    return Finding(code, Severity.WARNING, message, field)


def note(code: Code, message: str) -> Finding:
    return Finding(code, Severity.NOTE, message)


def refusals(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.severity is Severity.REFUSAL)


def warnings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.severity is Severity.WARNING)


def first_fix(findings: Iterable[Finding]) -> Mapping[str, Any] | None:
    """The change that removes the first refusal that has one (the window's "Fix")."""
    return next((f.fix for f in findings if f.is_refusal and f.fix), None)
