"""Where memory goes: a list of budgets, one per GPU, plus the host (CPU RAM)."""

from __future__ import annotations

from dataclasses import dataclass

from kvgui.core.devices.hardware.cpu import HostCpu


@dataclass(frozen=True)
class DeviceBudget:
    """A device the estimate places tensors on, and how many bytes llama.cpp may use there.

    ``budget`` is what is left for llama.cpp after the reserve (desktop, other apps, an
    embedding model, a safety margin); None means unknown (no fit verdict for it).
    ``split`` is this GPU's share of the layers (llama.cpp's --tensor-split); 0 = by budget.
    ``host`` (the CPU only): llama.cpp's CPU backend there, which decides the host buffer
    types the CPU weights take; None = this machine's, as the estimate guesses it.
    ``buft``: llama.cpp's name of the device's buffer type, as -ot names it ("CUDA0",
    "RPC0[host:port]"); "" = by its index among the local GPUs ("CUDA1", "Vulkan1" ...:
    tensor_overrides.buffer_type_slots). An RPC device has no pinned host buffer type
    (ggml-rpc's get_host_buffer_type is NULL), which changes where the CPU's weights go.
    ``bandwidth``: its memory bandwidth in bytes/s (a GPU's spec sheet, the host's probe; 0 =
    unknown), what the decode speed prediction divides the bytes read per token by.
    ``alignment``: an RPC device's buffer alignment as its server reports it (0: the CPU
    backend's 32 bytes, what ggml-rpc-server serves by default).
    """

    name: str
    budget: int | None
    is_gpu: bool = True
    split: float = 0.0
    host: HostCpu | None = None
    buft: str = ""
    bandwidth: float = 0.0
    alignment: int = 0

    @property
    def is_rpc(self) -> bool:
        """An RPC server's device (ggml-rpc names its buffer types "RPC<n>[endpoint]")."""
        return self.buft.startswith("RPC") and self.buft.endswith("]")

    @property
    def has_host_buffer(self) -> bool:
        """Whether llama.cpp takes this GPU's pinned host buffer type for the CPU's weights
        (make_cpu_buft_list: the first device that has one; RPC devices have none)."""
        return self.is_gpu and not self.is_rpc

    @property
    def endpoint(self) -> str:
        """An RPC device's server, HOST:PORT ("" for a local device)."""
        return self.buft[self.buft.index("[") + 1:-1] if self.is_rpc else ""


CPU_NAME = "CPU"


def rpc_device(endpoint: str, budget: int | None = None) -> DeviceBudget:
    """The device of a ggml-rpc-server at ``endpoint`` (one device per server, as
    ggml-rpc-server serves by default: its buffer type is "RPC0[endpoint]")."""
    return DeviceBudget(f"RPC {endpoint}", budget, buft=f"RPC0[{endpoint}]")


def with_rpc_devices(gpus: list[DeviceBudget], endpoints: tuple[str, ...]) -> list[DeviceBudget]:
    """The GPUs llama.cpp uses with --rpc: each server's device first, in --rpc's order
    (llama_model_load_from_file puts RPC devices before the local GPUs), unless the list
    already has it (by its buffer type); its memory unknown unless the caller's had it."""
    have = {g.buft for g in gpus if g.buft}
    added = [rpc_device(e) for e in endpoints if f"RPC0[{e}]" not in have]
    return added + gpus


def cpu(budget: int | None = None, host: HostCpu | None = None) -> DeviceBudget:
    return DeviceBudget(CPU_NAME, budget, is_gpu=False, host=host)
