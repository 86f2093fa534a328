"""The one translation of Settings into llama.cpp's structs, and every consumer built from it.

Expected values are llama-cli's, read from common/common.cpp (common_model_params_to_llama,
common_context_params_to_llama), common/common.h (the defaults) and common/arg.cpp (what a
flag stores), written out here as tables rather than recomputed.
"""

from __future__ import annotations

import ast
import dataclasses
import json

import pytest

from kvgui.core.commandline import llama_params as lp
from kvgui.core.commandline.export import llama_cli_args, llama_server_args, python_snippet
from kvgui.core.config.settings import FlashAttn, Settings, SplitMode

# llama-cli with no flags but -m/-c (-ngl all: kvgui's default): every field it sets.
LLAMA_CLI_MODEL_DEFAULTS = {
    "n_gpu_layers": -2, "split_mode": 1, "main_gpu": 0, "load_mode": -1, "lazy_mode": 1,
    "tensor_split": (), "tensor_buft_overrides": (), "vocab_only": False,
    "check_tensors": False, "use_extra_bufts": True, "no_host": False, "no_alloc": False,
    "load_mtp": False,
}
LLAMA_CLI_CONTEXT_DEFAULTS = {
    "n_ctx": 4096, "n_batch": 2048, "n_ubatch": 512, "n_seq_max": 1, "n_rs_seq": 0,
    "n_outputs_max": 0, "n_outputs_max_per_seq": 1, "ctx_type": 0, "rope_scaling_type": -1,
    "pooling_type": -1, "attention_type": -1, "flash_attn_type": -1, "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0, "yarn_ext_factor": -1.0, "yarn_attn_factor": -1.0,
    "yarn_beta_fast": -1.0, "yarn_beta_slow": -1.0, "yarn_orig_ctx": 0, "type_k": 1,
    "type_v": 1, "embeddings": False, "offload_kqv": True, "no_perf": False, "op_offload": True,
    "swa_full": False, "kv_unified": False,
}

# One change per Settings field: (field, value, the struct fields it must change to).
CHANGES = [
    ("n_ctx", 1000, {"context": {"n_ctx": 1000}}),
    ("type_k", "q8_0", {"context": {"type_k": 8}}),
    ("type_v", "q4_1", {"context": {"type_v": 3}}),
    ("flash_attn", FlashAttn.OFF, {"context": {"flash_attn_type": 0}}),
    ("n_gpu_layers", 7, {"model": {"n_gpu_layers": 7}}),
    ("n_batch", 300, {"context": {"n_batch": 300}}),
    ("n_ubatch", 100, {"context": {"n_ubatch": 100}}),
    ("n_parallel", 3, {"context": {"n_seq_max": 3}}),
    ("kv_offload", False, {"context": {"offload_kqv": False}}),
    ("swa_full", True, {"context": {"swa_full": True}}),
    ("kv_unified", True, {"context": {"kv_unified": True}}),
    ("mmap", False, {"model": {"load_mode": 0}}),
    ("tensor_split", (3.0, 1.0), {"model": {"tensor_split": (3.0, 1.0)}}),
    ("split_mode", SplitMode.ROW, {"model": {"split_mode": 2}}),
    ("main_gpu", 1, {"model": {"main_gpu": 1}}),
    ("n_threads", 3, {"context": {"n_threads": 3, "n_threads_batch": 3}}),
    ("mlock", True, {"model": {"load_mode": 3}}),
    ("repack", False, {"model": {"use_extra_bufts": False}}),
    ("n_outputs_max", 4, {"context": {"n_outputs_max": 4}}),
    # arg.cpp llm_add_n_cpu_ffn_overrides: blk\.{il} + LLM_FFN_EXPS_REGEX, to the CPU
    ("n_cpu_moe", 2, {"model": {"tensor_buft_overrides": (
        (r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"),
        (r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"))}}),
    ("override_tensor", (("exps", "CUDA0"),),
     {"model": {"tensor_buft_overrides": (("exps", "CUDA0"),)}}),
    # registered as backends before the load (arg.cpp add_rpc_devices): no struct field
    ("rpc_servers", ("127.0.0.1:50052",), {}),
    # flags kvgui passes on to llama.cpp's tools as given: no struct field (export_notes says
    # they are not part of an in-process load)
    ("extra_args", ("--jinja", "-t", "8"), {}),
]
FIELDS = [name for name, _, _ in CHANGES]


def test_every_settings_field_has_a_change_listed() -> None:
    assert sorted(FIELDS) == sorted(f.name for f in dataclasses.fields(Settings))


def test_defaults_are_llama_clis() -> None:
    p = lp.llama_params(Settings())
    assert dict(p.model) == LLAMA_CLI_MODEL_DEFAULTS
    context = dict(p.context)
    threads = context.pop("n_threads"), context.pop("n_threads_batch")
    assert context == LLAMA_CLI_CONTEXT_DEFAULTS
    assert threads == (lp.default_threads(), lp.default_threads())


@pytest.mark.parametrize(("name", "value", "expected"), CHANGES, ids=FIELDS)
def test_each_field_reaches_exactly_its_struct_fields(name, value, expected) -> None:
    base = lp.llama_params(Settings(n_threads=2))
    got = lp.llama_params(Settings(n_threads=2).replace(**{name: value}))
    for part in ("model", "context"):
        before, after = dict(getattr(base, part)), dict(getattr(got, part))
        changed = {k: v for k, v in after.items() if before[k] != v}
        assert changed == expected.get(part, {}), part


@pytest.mark.parametrize(("mmap", "mlock", "mode", "arg"), [
    (True, False, -1, None),  # llama-cli's default: auto
    (False, False, 0, "none"),
    (True, True, 3, "mmap+mlock"),
    (False, True, 2, "mlock"),
])
def test_load_mode(mmap: bool, mlock: bool, mode: int, arg: str | None) -> None:
    s = Settings(mmap=mmap, mlock=mlock)
    assert lp.load_mode(s) == mode and lp.load_mode_arg(s) == arg


def test_all_layers_is_spelled_once() -> None:
    """kvgui's -1 is arg.cpp's `-ngl all` (-2) in the struct, and llama-cpp-python's -1."""
    p = lp.llama_params(Settings())
    assert p.model["n_gpu_layers"] == lp.LLAMA_ALL_GPU_LAYERS == -2
    assert lp.llama_cpp_python_kwargs(p)["n_gpu_layers"] == -1
    assert lp.llama_params(Settings(n_gpu_layers=0)).model["n_gpu_layers"] == 0


def test_settings_validation_of_the_new_fields() -> None:
    for bad in ({"main_gpu": -1}, {"n_threads": 0}, {"n_threads": -2}, {"split_mode": "both"}):
        with pytest.raises(ValueError):
            Settings(**bad)
    s = Settings(split_mode="none", n_threads=4, mlock=True, main_gpu=1)  # type: ignore[arg-type]
    assert s.split_mode is SplitMode.NONE
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize("bad", [
    {"n_cpu_moe": -2}, {"n_cpu_moe": 4096}, {"n_cpu_moe": True},
    {"override_tensor": "exps=CPU"}, {"override_tensor": (("exps",),)},
    {"override_tensor": (("a,b", "CPU"),)}, {"override_tensor": (("a=b", "CPU"),)},
    {"override_tensor": (("a", ""),)}, {"override_tensor": (("a", 3),)},
    # with the terminator, more than llama_max_tensor_buft_overrides()
    {"override_tensor": (("a", "CPU"),) * 100, "n_cpu_moe": 4000},
    {"rpc_servers": "h:1"}, {"rpc_servers": ("h",)}, {"rpc_servers": ("h:0",)},
    {"rpc_servers": ("::1:50052",)}, {"rpc_servers": ("h:1,g:2",)},
    {"rpc_servers": tuple(f"h:{i}" for i in range(1, 18))},
])
def test_offload_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Settings(**bad)  # type: ignore[arg-type]


def test_offload_settings_round_trip_and_normalise() -> None:
    s = Settings(n_cpu_moe=-1, override_tensor=[["exps", "CPU"], ("x", "RPC0[h:1]")],  # type: ignore[arg-type]
                 rpc_servers=["h:1", "g:2", "h:1"])  # type: ignore[arg-type]
    assert s.override_tensor == (("exps", "CPU"), ("x", "RPC0[h:1]"))
    assert s.rpc_servers == ("h:1", "g:2")  # llama.cpp registers a server once
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert Settings(override_tensor=(("", "CPU"),) * 4095).n_cpu_moe == 0  # the most allowed


# --- every consumer is generated from the translation ----------------------------------------

def _snippet_kwargs(code: str) -> dict[str, object]:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Llama":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    raise AssertionError("no Llama(...) call")


def _consumers(s: Settings) -> dict[str, object]:
    """What each consumer makes of ``s`` (the parts that do not need llama_cpp)."""
    from kvgui.runtime import dryrun, worker

    return {
        "dry run request": dryrun.run_request(s),
        "chat worker Llama()": worker.llama_kwargs("m.gguf", s),
        "chat worker structs": worker.explicit_fields(s),
        "python snippet": python_snippet(s, "m.gguf"),  # keywords, or a note it cannot
        "llama-cli": llama_cli_args(s, "m.gguf"),
        "llama-server": llama_server_args(s, "m.gguf"),
    }


# Where a Settings field cannot show by the consumer's nature (and why).
NOT_APPLICABLE = {
    ("chat worker Llama()", "n_parallel"): "written on the struct (chat worker structs)",
    ("chat worker Llama()", "kv_unified"): "written on the struct (chat worker structs)",
    ("chat worker Llama()", "repack"): "written on the struct (chat worker structs)",
    ("llama-cli", "kv_unified"): "llama-cli has no -kvu (export_notes says so)",
    ("chat worker structs", "tensor_split"): "a pointer: Llama()'s own array carries it",
    # pointers and registrations the worker makes in its child (pointer_model_fields)
    **{(consumer, name): "made in the child process (llama_structs.pointer_model_fields)"
       for consumer in ("chat worker Llama()", "chat worker structs")
       for name in ("n_cpu_moe", "override_tensor", "rpc_servers")},
    ("chat worker Llama()", "n_outputs_max"): "written on the struct (chat worker structs)",
    ("python snippet", "n_outputs_max"): "no keyword; llama-cli's 0 is llama-cpp-python's",
    ("llama-cli", "n_outputs_max"): "no flag: llama-cli always uses n_batch",
    ("llama-server", "n_outputs_max"): "no flag: llama-server derives it from -np",
    # kept flags go to llama.cpp's tools (llama-cli, llama-server), not to an in-process load
    **{(consumer, "extra_args"): "llama.cpp flags for its tools (arg_table.split_for_tool)"
       for consumer in ("dry run request", "chat worker Llama()", "chat worker structs",
                        "python snippet", "measure worker")},
}


@pytest.mark.parametrize(("name", "value", "_expected"), CHANGES, ids=FIELDS)
def test_every_field_reaches_every_consumer(name, value, _expected) -> None:
    base = _consumers(Settings(n_threads=2))
    got = _consumers(Settings(n_threads=2).replace(**{name: value}))
    for consumer in base:
        if (consumer, name) in NOT_APPLICABLE:
            continue
        assert got[consumer] != base[consumer], f"{name} does not reach the {consumer}"


def test_chat_worker_writes_every_translated_field() -> None:
    from kvgui.runtime import worker

    s = Settings(n_ctx=1000, type_k="q8_0", n_parallel=3, kv_unified=True, n_threads=2)
    p = lp.llama_params(s)
    model, context = worker.explicit_fields(s)
    assert context == dict(p.context)
    assert model == {k: v for k, v in p.model.items()
                     if k not in ("tensor_split", "tensor_buft_overrides")}


def test_dry_run_request_is_the_translation() -> None:
    from kvgui.runtime import dryrun

    s = Settings(tensor_split=(1.0, 2.0), split_mode=SplitMode.NONE, main_gpu=1, n_threads=2)
    req = json.loads(json.dumps(dryrun.run_request(s)))
    p = lp.llama_params(s)
    assert req["context"] == dict(p.context)
    assert req["model"] == dict(p.model) | {"tensor_split": [1.0, 2.0],
                                            "tensor_buft_overrides": []}
    assert req["model"]["split_mode"] == 0 and req["model"]["main_gpu"] == 1  # not hard-coded


def test_snippet_keywords_are_the_translation() -> None:
    s = Settings(n_ctx=32768, type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON,
                 n_gpu_layers=20, n_batch=1024, n_ubatch=256, kv_offload=False, swa_full=True,
                 mmap=False, mlock=True, tensor_split=(3.0, 1.0), split_mode=SplitMode.ROW,
                 main_gpu=1, n_threads=6)
    assert _snippet_kwargs(python_snippet(s, "m.gguf")) == {
        "model_path": "m.gguf", "n_gpu_layers": 20, "split_mode": 2, "main_gpu": 1,
        "tensor_split": [3.0, 1.0], "use_mmap": False, "use_mlock": True, "n_ctx": 32768,
        "n_batch": 1024, "n_ubatch": 256, "n_threads": 6, "n_threads_batch": 6,
        "offload_kqv": False, "flash_attn": True, "swa_full": True, "type_k": 8, "type_v": 2,
    }
    kwargs = _snippet_kwargs(python_snippet(Settings(), "m.gguf"))
    assert kwargs == {"model_path": "m.gguf", "n_gpu_layers": -1, "n_ctx": 4096,
                      "n_batch": 2048, "n_ubatch": 512, "flash_attn": True, "swa_full": False,
                      "type_k": 1, "type_v": 1}


@pytest.mark.parametrize(("settings", "flags"), [
    (Settings(split_mode=SplitMode.NONE, main_gpu=1), ["-sm", "none", "-mg", "1"]),
    (Settings(n_threads=8), ["-t", "8"]),
    (Settings(mlock=True), ["-lm", "mmap+mlock"]),
    (Settings(mmap=False, mlock=True), ["-lm", "mlock"]),
    (Settings(mmap=False), ["-lm", "none"]),
])
def test_export_emits_the_new_fields(settings: Settings, flags: list[str]) -> None:
    for argv in (llama_cli_args(settings, "m.gguf"), llama_server_args(settings, "m.gguf")):
        joined = " ".join(argv)
        assert " ".join(flags) in joined
    assert "-t" not in llama_cli_args(Settings(), "m.gguf", full=True)  # -t -1: every CPU


@pytest.mark.parametrize("settings", [
    Settings(n_cpu_moe=3, override_tensor=(("exps", "CPU"), ("x", "RPC0[h:1]"))),
    Settings(n_cpu_moe=-1),
    Settings(override_tensor=((r"blk\.[0-9]\.ffn", "CPU"),), rpc_servers=("h:1", "g:2")),
])
def test_snippet_tensor_overrides_are_the_translation(settings: Settings) -> None:
    """The snippet's TENSOR_OVERRIDES / RPC_SERVERS (evaluated) are the structs' values."""
    code = python_snippet(settings, "m.gguf")
    head = code.split("import ctypes", 1)[0]
    ns: dict[str, object] = {}
    exec(head.replace("from llama_cpp import Llama", ""), ns)  # the snippet's own text
    p = lp.llama_params(settings)
    assert tuple(ns["TENSOR_OVERRIDES"]) == p.model["tensor_buft_overrides"]  # type: ignore[arg-type]
    assert tuple(ns["RPC_SERVERS"]) == p.rpc_servers  # type: ignore[arg-type]
    compile(code, "snippet", "exec")
    assert "import ctypes" not in python_snippet(Settings(), "m.gguf")
