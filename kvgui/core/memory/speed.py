"""How fast a placement decodes: predicted tokens/s from the bytes each device reads per token.

Generating one token runs every layer once on one token: each weight matrix is read once in
a matrix-vector product, so decoding is bound by memory bandwidth, not arithmetic. Per token:

- a device reads the weights of the layers it holds: dense tensors whole, the routed experts'
  tensors of a mixture-of-experts layer only for the experts the router picks — the active
  share n_expert_used / n_expert of them (shared experts are dense); the token embedding is a
  row lookup; the output head is read whole (a tied head: the embedding matrix, whole);
- the attention reads the KV cache of its sequence where the cache lives (the layer's device,
  or the host with -nkvo), here at a full context: the last token's speed, the slowest;
  recurrent layers read and write their state;
- the layers run one after the other, so the devices' times add up; every time the token's
  activations move between devices (a layer boundary, experts on the CPU of a GPU layer, the
  attention on the CPU with -nkvo, the logits back to the host) costs a synchronised copy, and
  across the network to an RPC server a round trip.

time per token = Σ_device bytes / (bandwidth × efficiency) + hops × hop latency.

Bandwidth: a GPU's spec sheet (resources/gpus.json), the host's measured by a probe
(devices/hardware/membw.py). What the prediction cannot know is how close llama.cpp's kernels
come to that bandwidth on a given build and quantization, so it is a range: efficiency
0.50–0.85 of a GPU's spec bandwidth (0.70 nominal), 0.55–1.0 of the host's measured one (0.80),
hops of 10–60 µs locally (25 µs) and 0.15–2 ms to an RPC server (0.4 ms). Prompt processing
(compute-bound, batched) is not predicted; neither is a CPU too slow to keep up with its RAM.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model import layer_rules
from kvgui.core.model.info import ModelInfo, weight_group

GB = 1e9

# efficiency of the spec-sheet / measured bandwidth: (low, nominal, high)
GPU_EFFICIENCY = (0.50, 0.70, 0.85)
HOST_EFFICIENCY = (0.55, 0.80, 1.0)
# seconds per move of the token's activations between devices: (fast, nominal, slow)
LOCAL_HOP = (10e-6, 25e-6, 60e-6)
RPC_HOP = (0.15e-3, 0.4e-3, 2e-3)
# when nothing says: a mid-range discrete GPU, a dual-channel DDR4/DDR5 desktop
ASSUMED_GPU_BANDWIDTH = 448 * GB
ASSUMED_HOST_BANDWIDTH = 40 * GB

# llama.cpp's routed-expert tensors (common.h LLM_FFN_EXPS_REGEX; biases included)
EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps\b")

ASSUMPTIONS = (
    "one sequence decoding at a full context (the last token: the slowest)",
    "decode is memory-bound: each device reads its weights (routed experts: the active share "
    "only) and its KV cache once per token",
    f"GPUs reach {GPU_EFFICIENCY[0]:.0%}–{GPU_EFFICIENCY[2]:.0%} of their spec-sheet "
    f"bandwidth, the host {HOST_EFFICIENCY[0]:.0%}–{HOST_EFFICIENCY[2]:.0%} of its measured one",
    f"each move between devices costs {LOCAL_HOP[0] * 1e6:.0f}–{LOCAL_HOP[2] * 1e6:.0f} µs "
    f"locally, {RPC_HOP[0] * 1e3:.2g}–{RPC_HOP[2] * 1e3:.2g} ms to an RPC server",
)


@dataclass(frozen=True)
class LayerTraffic:
    """Bytes one token reads from a model's weights, by where they go with -ngl/-ot."""

    dense: tuple[int, ...]  # per layer: every tensor but the routed experts
    experts: tuple[int, ...]  # per layer: the routed experts' tensors, all of them (stored)
    active: float  # the share of a layer's experts one token reads (n_expert_used / n_expert)
    input_read: int  # the embedding rows of one token (host memory)
    output_read: int  # the output layer: norm and head (a tied head: the embedding matrix)
    other: int  # outside the layers (host memory)


def traffic(model: ModelInfo, memo: ModelMemo | None = None) -> LayerTraffic:
    """The model's per-token reads (computed once per model and kept in ``memo``)."""
    if memo is not None:
        return memo.for_model(model).get("speed_traffic", None, lambda: _traffic(model))
    return _traffic(model)


def _traffic(model: ModelInfo) -> LayerTraffic:
    n_all = len(model.layers)
    dense = [0] * n_all
    experts = [0] * n_all
    active = (model.n_expert_used / model.n_expert) if model.n_expert else 1.0
    input_read = output_read = other = 0
    names = layer_rules.output_tensors(model.arch)
    has_output = False
    embd_bytes = 0
    for t in model.tensors:
        group = weight_group(t.name, n_all, model.n_layer, names)
        if group == "skip":
            continue
        if isinstance(group, int):
            if EXPERT_TENSOR.search(t.name):
                experts[group] += t.nbytes
            else:
                dense[group] += t.nbytes
        elif group == "input":
            rows = t.shape[1] if len(t.shape) > 1 else 1
            input_read += t.nbytes // max(rows, 1)  # get_rows: one row per token
            if t.name == "token_embd.weight":
                embd_bytes = t.nbytes
        elif group == "output":
            output_read += t.nbytes
            has_output = has_output or t.name == "output.weight"
        else:
            other += t.nbytes
    if not model.tensors:  # a header without its tensor table: the layers' sums, all dense
        dense = list(model.layer_weights)
        output_read = model.output_weights
    elif not has_output and (model.tied_output_weights or embd_bytes):
        output_read += embd_bytes  # the head is the embedding matrix, read whole
    return LayerTraffic(tuple(dense), tuple(experts), active, input_read, output_read, other)


@dataclass(frozen=True)
class DeviceRead:
    """One device's part of a token: what it reads, at what bandwidth, in how long."""

    name: str
    is_gpu: bool
    weights: int  # bytes of weights read per token
    kv: int  # bytes of KV cache / recurrent state read per token
    bandwidth: float  # bytes/s (spec sheet or measured; ``assumed`` when neither said)
    assumed: bool
    seconds: float  # nominal

    @property
    def total(self) -> int:
        return self.weights + self.kv


@dataclass(frozen=True)
class SpeedPrediction:
    """Predicted decode speed: nominal tokens/s and a range (``low``–``high``), and why."""

    tokens_per_s: float
    low: float
    high: float
    devices: tuple[DeviceRead, ...]
    hops: int
    rpc_hops: int
    assumptions: tuple[str, ...] = ASSUMPTIONS

    @property
    def text(self) -> str:
        return f"{_fmt(self.tokens_per_s)} t/s ({_fmt(self.low)}–{_fmt(self.high)})"

    @property
    def bytes_per_token(self) -> int:
        return sum(d.total for d in self.devices)

    def to_json(self) -> dict[str, object]:
        return {"tokens_per_s": self.tokens_per_s, "low": self.low, "high": self.high,
                "hops": self.hops, "rpc_hops": self.rpc_hops,
                "devices": [{"name": d.name, "is_gpu": d.is_gpu, "weights_read": d.weights,
                             "kv_read": d.kv, "bandwidth": d.bandwidth,
                             "bandwidth_assumed": d.assumed, "seconds": d.seconds}
                            for d in self.devices],
                "assumptions": list(self.assumptions)}


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


@dataclass(frozen=True)
class Route:
    """What a placement makes one token do, whatever the context: the weight bytes each
    slot (GPUs, host last) reads, and the moves between devices."""

    weights: tuple[int, ...]
    hops: int
    rpc_hops: int


def predict(model: ModelInfo, kv_offload: bool, devices: Sequence[DeviceBudget],
            layer_device: Sequence[int], output_device: int,
            cpu_experts: Sequence[bool], kv_read: Sequence[int],
            memo: ModelMemo | None = None) -> SpeedPrediction:
    """The decode speed of one placement.

    ``kv_offload``: the KV cache on the layers' devices (False: -nkvo, attention on the host);
    ``devices``: the GPUs in llama.cpp's order, then the host (as estimate() takes them);
    ``layer_device``/``output_device``: each layer's GPU (-1: the host) and the output's;
    ``cpu_experts``: per layer, its routed experts in host memory (--n-cpu-moe, -ot);
    ``kv_read``: per device slot (GPUs, host last), the KV cache and state one sequence reads
    per token at a full context (the estimate's KV per device over its streams)."""
    r = route(model, kv_offload, devices, layer_device, output_device, cpu_experts, memo)
    return timing(r, devices, kv_read)


def route(model: ModelInfo, kv_offload: bool, devices: Sequence[DeviceBudget],
          layer_device: Sequence[int], output_device: int, cpu_experts: Sequence[bool],
          memo: ModelMemo | None = None, tr: LayerTraffic | None = None,
          pinned_read: Sequence[tuple[int, int]] = ()) -> Route:
    """The context-free half of predict(): weights read per slot, hops. ``tr``: the reads
    of what the placement moves (default: the whole model's), ``pinned_read``: (slot, bytes)
    read where the user's -ot rules keep tensors (slot -1: the host)."""
    tr = tr or traffic(model, memo)
    gpus = [d for d in devices if d.is_gpu]
    n = len(gpus) + 1
    cpu = n - 1
    weights = [0] * n
    for slot, nbytes in pinned_read:
        weights[cpu if slot < 0 else slot] += nbytes
    weights[cpu] += tr.input_read + tr.other
    weights[cpu if output_device < 0 else output_device] += tr.output_read
    for il, dev in enumerate(layer_device):
        slot = cpu if dev < 0 else dev
        weights[slot] += tr.dense[il]
        expert_read = int(tr.experts[il] * tr.active)
        weights[cpu if cpu_experts[il] else slot] += expert_read

    # the path of one token through the devices: input on the host, per layer its attention
    # (the host with -nkvo) and feed-forward (the host for experts kept there), the output,
    # the logits read back on the host
    path = [cpu]
    for il, dev in enumerate(layer_device):
        slot = cpu if dev < 0 else dev
        layer = model.layers[il]
        if not kv_offload and slot != cpu and layer.has_kv:
            path += [slot, cpu, slot]
        else:
            path.append(slot)
        if cpu_experts[il] and slot != cpu and tr.experts[il]:
            path += [cpu, slot]
    path += [cpu if output_device < 0 else output_device, cpu]
    hops = rpc_hops = 0
    for a, b in itertools.pairwise(path):
        if a != b:
            hops += 1
            if (a != cpu and gpus[a].is_rpc) or (b != cpu and gpus[b].is_rpc):
                rpc_hops += 1
    return Route(tuple(weights), hops, rpc_hops)


def timing(r: Route, devices: Sequence[DeviceBudget], kv_read: Sequence[int]
           ) -> SpeedPrediction:
    """The context's half of predict(): each slot's reads over its bandwidth, the hops."""
    gpus = [d for d in devices if d.is_gpu]
    host = next((d for d in devices if not d.is_gpu), None)
    n = len(gpus) + 1
    cpu = n - 1
    weights, hops, rpc_hops = r.weights, r.hops, r.rpc_hops
    local_hops = hops - rpc_hops

    reads: list[DeviceRead] = []
    slow = fast = nominal = 0.0
    for slot in range(n):
        budget = gpus[slot] if slot < cpu else host
        is_gpu = slot < cpu
        bw = budget.bandwidth if budget is not None else 0.0
        assumed = bw <= 0
        if assumed:
            bw = ASSUMED_GPU_BANDWIDTH if is_gpu else ASSUMED_HOST_BANDWIDTH
        eff = GPU_EFFICIENCY if is_gpu else HOST_EFFICIENCY
        kv = kv_read[slot] if slot < len(kv_read) else 0
        total = weights[slot] + kv
        if not total and slot < cpu:
            continue
        name = budget.name if budget is not None else "CPU"
        secs = total / (bw * eff[1])
        reads.append(DeviceRead(name, is_gpu, weights[slot], kv, bw, assumed, secs))
        nominal += secs
        slow += total / (bw * eff[0])
        fast += total / (bw * eff[2])
    nominal += local_hops * LOCAL_HOP[1] + rpc_hops * RPC_HOP[1]
    slow += local_hops * LOCAL_HOP[2] + rpc_hops * RPC_HOP[2]
    fast += local_hops * LOCAL_HOP[0] + rpc_hops * RPC_HOP[0]
    extra: list[str] = []
    if any(r.assumed for r in reads):
        which = ", ".join(r.name for r in reads if r.assumed)
        extra.append(f"bandwidth unknown for {which}: assumed "
                     f"{ASSUMED_GPU_BANDWIDTH / GB:.0f} GB/s for a GPU, "
                     f"{ASSUMED_HOST_BANDWIDTH / GB:.0f} GB/s for the host")
    return SpeedPrediction(1 / nominal if nominal else 0.0, 1 / slow if slow else 0.0,
                           1 / fast if fast else 0.0, tuple(reads), hops, rpc_hops,
                           ASSUMPTIONS + tuple(extra))
