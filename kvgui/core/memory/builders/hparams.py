"""llama_hparams, as far as the graph builders read it (src/llama-hparams.cpp, llama-model.cpp
load_hparams and each src/models/<arch>.cpp load_arch_hparams).

Read from the model's header keys (``ModelInfo.arch_keys`` / ``arch_arrays``, the "<arch>."
prefix dropped) with llama.cpp's key names and defaults; the per-layer rules (which layers
slide, which are recurrent, which keep a cache) come from ``ModelInfo.layers``, where kvgui
already follows llama.cpp's load_arch_hparams for every architecture. An architecture that sets
an hparam in code rather than from a key (gemma2's attn_soft_cap, deepseek2's defaults) sets it
in its builder module's ``hparams`` function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

T = TypeVar("T", int, float)

# llama_expert_gating_func_type
GATING_NONE, GATING_SOFTMAX, GATING_SIGMOID, GATING_SOFTMAX_WEIGHT = 0, 1, 2, 3
GATING_SQRT_SOFTPLUS = 4


@dataclass
class Hparams:
    """The subset of llama_hparams the builders use; per-layer values are lists."""

    arch: str
    n_layer_all: int
    n_layer: int  # without the NextN/MTP layers
    n_embd: int
    n_head_arr: list[int]
    n_head_kv_arr: list[int]
    n_ff_arr: list[int]
    n_embd_head_k_full: int
    n_embd_head_v_full: int
    n_embd_head_k_swa: int
    n_embd_head_v_swa: int
    n_rot_full: int
    n_rot_swa: int
    n_vocab: int
    n_expert: int = 0
    n_expert_used_arr: list[int] = field(default_factory=list)
    n_expert_groups: int = 0
    n_group_used: int = 0
    n_expert_shared: int = 0
    n_layer_dense_lead: int = 0
    expert_weights_scale: float = 0.0
    expert_weights_norm: bool = False
    expert_gating_func: int = GATING_NONE
    n_lora_q: int = 0
    n_lora_kv: int = 0
    n_embd_head_k_mla_impl: int = 0
    n_embd_head_v_mla_impl: int = 0
    f_attention_scale: float = 0.0
    f_embedding_scale: float = 0.0
    f_clamp_kqv: float = 0.0
    f_max_alibi_bias: float = 0.0
    attn_soft_cap: bool = False
    f_attn_logit_softcapping: float = 50.0
    f_final_logit_softcapping: float = 30.0
    f_attn_temp_scale: float = 0.0
    use_kq_norm: bool = False
    causal_attn: bool = True
    n_shortconv_l_cache: int = 0
    n_embd_r_: int = 0
    n_embd_s_: int = 0
    swiglu_clamp_exp: list[float] = field(default_factory=list)
    swiglu_clamp_shexp: list[float] = field(default_factory=list)
    is_swa_impl: list[bool] = field(default_factory=list)
    is_recr_impl: list[bool] = field(default_factory=list)
    has_kv_impl: list[bool] = field(default_factory=list)
    n_swa: int = 0
    n_pos_per_embd_: int = 1
    keys: dict[str, object] = field(default_factory=dict)
    # --- fam-moe ---
    n_moe_layer_step: int = 0  # interleave_moe_layer_step (llama4, ernie4_5-moe)
    n_no_rope_layer_step: int = 4  # llama4: every n-th layer has no RoPE
    swa_off: bool = False  # llama4: a sliding_window key of 0 (LLAMA_SWA_TYPE_NONE)
    n_ff_shexp: int = 0  # expert_shared_feed_forward_length
    # --- end fam-moe ---
    # fam-hybrid: state-space, linear attention and RWKV (each load_arch_hparams reads them)
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_dt_rank: int = 0
    ssm_n_group: int = 0
    ssm_dt_b_c_rms: bool = False
    f_residual_scale: float = 0.0
    f_logit_scale: float = 0.0
    token_shift_count: int = 2
    wkv_head_size: int = 0
    rescale_every_n_layers: int = 0
    n_lora_decay: int = 0
    n_lora_iclr: int = 0
    n_lora_value_res_mix: int = 0
    n_lora_gate: int = 0

    def n_head(self, il: int = 0) -> int:
        return self.n_head_arr[il]

    def n_head_kv(self, il: int = 0) -> int:
        return self.n_head_kv_arr[il]

    def n_ff(self, il: int = 0) -> int:
        return self.n_ff_arr[il]

    def n_embd_head_k(self, il: int = 0) -> int:
        return self.n_embd_head_k_swa if self.is_swa(il) else self.n_embd_head_k_full

    def n_embd_head_v(self, il: int = 0) -> int:
        return self.n_embd_head_v_swa if self.is_swa(il) else self.n_embd_head_v_full

    def n_rot(self, il: int = 0) -> int:
        return self.n_rot_swa if self.is_swa(il) else self.n_rot_full

    def n_embd_k_gqa(self, il: int = 0) -> int:
        return self.n_embd_head_k(il) * self.n_head_kv(il)

    def n_embd_v_gqa(self, il: int = 0) -> int:
        return self.n_embd_head_v(il) * self.n_head_kv(il)

    def n_embd_v_gqa_max(self) -> int:
        return max([self.n_embd_v_gqa(0)] + [self.n_embd_v_gqa(il)
                                             for il in range(self.n_layer_all)])

    def n_embd_k_gqa_max(self) -> int:
        return max([self.n_embd_k_gqa(0)] + [self.n_embd_k_gqa(il)
                                             for il in range(self.n_layer_all)])

    def n_expert_used(self, il: int = -1) -> int:
        if il < 0:
            return max(self.n_expert_used_arr, default=0)
        return self.n_expert_used_arr[il]

    def n_embd_head_k_mla(self) -> int:
        return self.n_embd_head_k_mla_impl or self.n_embd_head_k()

    def n_embd_head_v_mla(self) -> int:
        return self.n_embd_head_v_mla_impl or self.n_embd_head_v()

    def is_mla(self) -> bool:
        return self.n_embd_head_k_mla_impl != 0 and self.n_embd_head_v_mla_impl != 0

    def is_swa(self, il: int) -> bool:
        return self.is_swa_impl[il]

    def is_recr(self, il: int) -> bool:
        return self.is_recr_impl[il]

    def has_kv(self, il: int) -> bool:
        return self.has_kv_impl[il]

    def n_embd_r(self) -> int:
        return self.n_embd_r_

    def n_embd_s(self) -> int:
        return self.n_embd_s_

    def n_pos_per_embd(self) -> int:
        return self.n_pos_per_embd_

    def n_embd_inp(self) -> int:
        return self.n_embd

    def key(self, name: str, default: object = None) -> object:
        return self.keys.get(name, default)

    def key_int(self, name: str, default: int = 0) -> int:
        return _num(self.keys, name, default, int)

    def key_float(self, name: str, default: float = 0.0) -> float:
        return _num(self.keys, name, default, float)


def _num(keys: dict[str, object], name: str, default: T, kind: type[T]) -> T:
    """A numeric header key (llama_model_loader::get_key with a default)."""
    value = keys.get(name, default)
    if not isinstance(value, (int, float)):
        raise ValueError(f"header key {name} = {value!r} is not a number")
    return kind(value)


def _per_layer(value: object, n: int, default: int) -> list[int]:
    """get_key_or_arr: one value for all layers, or one per layer."""
    if value is None:
        return [default] * n
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value[:n]] + [0] * max(0, n - len(value))
    if not isinstance(value, (int, float)):
        raise ValueError(f"per-layer key {value!r} is not a number")
    return [int(value)] * n


def from_model(model: ModelInfo) -> Hparams:
    """The generic llama_model_base::load_hparams part; architectures add theirs after."""
    keys: dict[str, object] = dict(model.arch_keys)
    keys.update(dict(model.arch_arrays))
    n_all = len(model.layers)
    n_head_arr = _per_layer(keys.get("attention.head_count"), n_all, 0)
    n_head_kv_arr = list(n_head_arr)
    if "attention.head_count_kv" in keys:
        n_head_kv_arr = _per_layer(keys["attention.head_count_kv"], n_all, 0)
    n_head0 = n_head_arr[0] if n_head_arr else 0
    if n_head0 > 0:
        head_k = _num(keys, "attention.key_length", model.n_embd // n_head0, int)
        head_v = _num(keys, "attention.value_length", model.n_embd // n_head0, int)
        n_rot = _num(keys, "rope.dimension_count", head_k, int)
    else:
        head_k = head_v = n_rot = 0
    n_expert = _num(keys, "expert_count", 0, int)
    hp = Hparams(
        arch=model.arch, n_layer_all=n_all, n_layer=model.n_layer, n_embd=model.n_embd,
        n_head_arr=n_head_arr, n_head_kv_arr=n_head_kv_arr,
        n_ff_arr=_per_layer(keys.get("feed_forward_length"), n_all, 0),
        n_embd_head_k_full=head_k, n_embd_head_v_full=head_v,
        n_embd_head_k_swa=_num(keys, "attention.key_length_swa", head_k, int),
        n_embd_head_v_swa=_num(keys, "attention.value_length_swa", head_v, int),
        n_rot_full=n_rot,
        n_rot_swa=_num(keys, "rope.dimension_count_swa", n_rot, int),
        n_vocab=model.n_vocab, n_expert=n_expert,
        n_expert_used_arr=_per_layer(keys.get("expert_used_count"), n_all, 0),
        n_expert_groups=_num(keys, "expert_group_count", 0, int),
        n_group_used=_num(keys, "expert_group_used_count", 0, int),
        causal_attn=bool(keys.get("attention.causal", True)),
        n_embd_r_=model.n_embd_r, n_embd_s_=model.n_embd_s,
        swiglu_clamp_exp=[0.0] * n_all, swiglu_clamp_shexp=[0.0] * n_all,
        is_swa_impl=[layer.swa for layer in model.layers],
        is_recr_impl=[layer.recurrent for layer in model.layers],
        has_kv_impl=[layer.has_kv for layer in model.layers],
        n_swa=model.n_swa, keys=keys,
    )
    hp.f_attention_scale = _num(keys, "attention.scale", 0.0, float)
    hp.f_embedding_scale = _num(keys, "embedding_scale", 0.0, float)
    hp.f_clamp_kqv = _num(keys, "attention.clamp_kqv", 0.0, float)
    hp.f_max_alibi_bias = _num(keys, "attention.max_alibi_bias", 0.0, float)
    return hp


def gemma_attention_scale(hp: Hparams, is_27b: bool) -> float:
    """gemma2/gemma3 load_arch_hparams: the query scale (27B models scale by n_embd/n_head)."""
    return 1.0 / math.sqrt(hp.n_embd / hp.n_head(0)) if is_27b \
        else 1.0 / math.sqrt(hp.n_embd_head_k())


def ssm_hparams(hp: Hparams) -> None:
    """The SSM keys every state-space / gated-delta-net load_arch_hparams reads (fam-hybrid):
    ssm.conv_kernel, ssm.inner_size, ssm.state_size, ssm.time_step_rank, ssm.group_count."""
    hp.ssm_d_conv = hp.key_int("ssm.conv_kernel")
    hp.ssm_d_inner = hp.key_int("ssm.inner_size")
    hp.ssm_d_state = hp.key_int("ssm.state_size")
    hp.ssm_dt_rank = hp.key_int("ssm.time_step_rank")
    hp.ssm_n_group = hp.key_int("ssm.group_count")
