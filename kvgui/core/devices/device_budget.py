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
    ``bandwidth``: its memory bandwidth in bytes/s (a GPU's spec sheet, the host's probe; 0 =
    unknown), what the decode speed prediction divides the bytes read per token by.
    ``rpc``: the ``HOST:PORT`` of the llama.cpp RPC server this device is on ("" = a local
    device): llama.cpp's scheduler treats it as a GPU, with the RPC backend's rules (its
    server's alignment, no op offload), and each hop to it crosses the network.
    """

    name: str
    budget: int | None
    is_gpu: bool = True
    split: float = 0.0
    host: HostCpu | None = None
    bandwidth: float = 0.0
    rpc: str = ""
    alignment: int = 0  # an RPC device's buffer alignment, as its server reports it (0: 32)


CPU_NAME = "CPU"


def cpu(budget: int | None = None, host: HostCpu | None = None) -> DeviceBudget:
    return DeviceBudget(CPU_NAME, budget, is_gpu=False, host=host)
