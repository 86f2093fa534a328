"""Importing pasted llama-cli / llama-server command lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgui.core.commandline.export import llama_cli_args, llama_server_args
from kvgui.core.commandline.parse import CommandParseError, parse_args, parse_command
from kvgui.core.commandline.shellquote import render
from kvgui.core.config.settings import (
    ALL_LAYERS,
    ALL_MOE_LAYERS,
    AUTO_THREADS,
    FlashAttn,
    Settings,
    SplitMode,
    n_cpu_moe_overrides,
)
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES


def test_short_and_long_forms_mean_the_same() -> None:
    short = parse_command(
        "llama-cli -m a.gguf -c 8192 -ngl 20 -ctk q8_0 -ctv q4_0 -fa on -b 1024 -ub 256 "
        "-np 2 --swa-full -nkvo -lm none -ts 3,1 -sm row -mg 1 -t 6"
    )
    long = parse_command(
        "llama-cli --model a.gguf --ctx-size 8192 --n-gpu-layers 20 --cache-type-k q8_0 "
        "--cache-type-v q4_0 --flash-attn on --batch-size 1024 --ubatch-size 256 "
        "--parallel 2 --swa-full --no-kv-offload --load-mode none --tensor-split 3,1 "
        "--split-mode row --main-gpu 1 --threads 6"
    )
    expected = Settings(
        n_ctx=8192, n_gpu_layers=20, type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON,
        n_batch=1024, n_ubatch=256, n_parallel=2, swa_full=True, kv_offload=False,
        mmap=False, tensor_split=(3.0, 1.0), split_mode=SplitMode.ROW, main_gpu=1, n_threads=6,
    )
    assert short.settings == long.settings == expected
    assert short.model_path == long.model_path == "a.gguf"
    assert short.program == "llama-cli"
    assert short.unknown == long.unknown == []
    assert short.given == {
        "n_ctx", "n_gpu_layers", "type_k", "type_v", "flash_attn", "n_batch", "n_ubatch",
        "n_parallel", "swa_full", "kv_offload", "mmap", "mlock", "tensor_split", "split_mode",
        "main_gpu", "n_threads",
    }
    assert not short.ctx_from_model


def test_equals_and_underscore_forms() -> None:
    p = parse_command("llama-cli --model=/m/a.gguf --ctx_size=16384 --cache-type-k=q8_0 "
                      "--flash-attn=off --gpu_layers=all")
    assert p.model_path == "/m/a.gguf"
    assert p.settings.n_ctx == 16384
    assert p.settings.type_k == "q8_0"
    assert p.settings.flash_attn is FlashAttn.OFF
    assert p.settings.n_gpu_layers == ALL_LAYERS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-fa on", FlashAttn.ON), ("-fa off", FlashAttn.OFF), ("-fa auto", FlashAttn.AUTO),
        ("-fa 1", FlashAttn.ON), ("-fa 0", FlashAttn.OFF), ("-fa enabled", FlashAttn.ON),
        ("--flash-attn disabled", FlashAttn.OFF), ("-fa -1", FlashAttn.AUTO),
        # the older bare switch, before another flag and at the end
        ("-fa -c 4096", FlashAttn.ON), ("-c 4096 -fa", FlashAttn.ON),
        ("--flash-attn -ngl 10", FlashAttn.ON), ("", FlashAttn.AUTO),
    ],
)
def test_flash_attn_forms(text: str, expected: FlashAttn) -> None:
    p = parse_command(f"llama-cli -m a.gguf {text}")
    assert p.settings.flash_attn is expected
    assert p.unknown == []


@pytest.mark.parametrize(
    ("value", "layers", "auto"),
    [("all", ALL_LAYERS, False), ("auto", ALL_LAYERS, True), ("0", 0, False),
     ("33", 33, False), ("999", 999, False), ("-1", ALL_LAYERS, True), ("-2", ALL_LAYERS, False)],
)
def test_gpu_layers(value: str, layers: int, auto: bool) -> None:
    p = parse_command(f"llama-cli -m a.gguf -c 4096 -ngl {value}")
    assert p.settings.n_gpu_layers == layers
    assert ("n_gpu_layers" in p.given) is True
    assert any("-ngl auto" in w for w in p.warnings) is auto


def test_unknown_flags_are_kept_in_order_with_their_values() -> None:
    p = parse_command(
        "llama-server -m a.gguf --temp 0.7 -c 4096 --jinja --top-k 40 -ncffn 2 "
        "--reasoning-budget -1 --n-cpu-ffn=3"
    )
    assert p.unknown == ["--temp", "0.7", "--jinja", "--top-k", "40", "-ncffn", "2",
                         "--reasoning-budget", "-1", "--n-cpu-ffn=3"]
    assert p.settings.n_ctx == 4096
    assert sum("ignores it" in w for w in p.warnings) == 2  # -ncffn and --n-cpu-ffn


# (command's override flags, override_tensor, n_cpu_moe): arg.cpp appends every -ot entry,
# --cpu-moe and --n-cpu-moe to one list in the order given; llama.cpp takes the first match
OVERRIDE_IMPORTS = [
    ("-ot exps=CPU", (("exps", "CPU"),), 0),
    ("--override-tensor=a=CPU,b=CUDA0 -ot c=CPU", (("a", "CPU"), ("b", "CUDA0"), ("c", "CPU")), 0),
    ("--n-cpu-moe 8", (), 8),
    ("-ncmoe 4 --n-cpu-moe 8 -ncmoe 2", (), 8),  # each adds its layers' overrides
    ("--cpu-moe", (), -1),
    ("--n-cpu-moe 8 -cmoe", (), -1),
    ("-ot x=CUDA0 --n-cpu-moe 2", (("x", "CUDA0"),), 2),
    ("-ot x=CPU --n-cpu-moe 2", (("x", "CPU"),), 2),
    ("--n-cpu-moe 2 -ot x=CPU", (("x", "CPU"),), 2),  # all to the CPU: order cannot matter
    # --n-cpu-moe before an -ot to a GPU: its overrides keep their place, spelled out
    ("--n-cpu-moe 2 -ot x=CUDA0 --n-cpu-moe 3",
     ((r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"),
      (r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"), ("x", "CUDA0")), 3),
    ("-cmoe -ot x=RPC0[h:1]", ((r"\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"),
                              ("x", "RPC0[h:1]")), 0),
    ("-ot =CPU", (("", "CPU"),), 0),  # an empty regex: every tensor
]


@pytest.mark.parametrize(("flags", "override_tensor", "n_cpu_moe"), OVERRIDE_IMPORTS)
def test_tensor_overrides_import_in_llama_cpps_order(
        flags: str, override_tensor: tuple[tuple[str, str], ...], n_cpu_moe: int) -> None:
    p = parse_command(f"llama-cli -m a.gguf {flags}")
    assert p.settings.override_tensor == override_tensor
    assert p.settings.n_cpu_moe == n_cpu_moe
    assert p.unknown == [] and not any("ignores it" in w for w in p.warnings)


def test_tensor_overrides_from_the_environment_come_before_the_command_line() -> None:
    p = parse_command("LLAMA_ARG_N_CPU_MOE=3 LLAMA_ARG_OVERRIDE_TENSOR=e=CUDA0 "
                      "LLAMA_ARG_RPC=h:50052 llama-cli -m a.gguf -ot z=CUDA1 --rpc g:1,h:50052")
    # the environment in arg.cpp's registration order (-ot before --n-cpu-moe), then argv:
    # the experts of layers 0-2 go to the CPU before the -ot z=CUDA1 is searched
    assert p.settings.override_tensor == (
        ("e", "CUDA0"), *n_cpu_moe_overrides(3), ("z", "CUDA1"))
    assert p.settings.n_cpu_moe == 0
    assert p.settings.rpc_servers == ("h:50052", "g:1")  # each server registered once


@pytest.mark.parametrize("flags", [
    "-ot exps", "-ot a=CPU,", "-ot a=", "--n-cpu-moe -1", "--n-cpu-moe x", "--n-cpu-moe 5000",
    "--rpc ''", "--rpc host", "--rpc host:0", "--rpc host:99999", "--rpc ::1:50052",
    "--rpc h:1,", "-ot", "--rpc",
])
def test_bad_override_and_rpc_values_are_refused(flags: str) -> None:
    with pytest.raises(CommandParseError):
        parse_command(f"llama-cli -m a.gguf {flags}")


def test_extras() -> None:
    p = parse_command("llama-server -m a.gguf -c 4096 --host 0.0.0.0 --port 9000 --fit off "
                      "-sys 'You are brief.' -p hi")
    assert p.extras == {"host": "0.0.0.0", "port": 9000, "fit": "off",
                        "system_prompt": "You are brief.", "prompt": "hi"}


def test_server_defaults_to_four_unified_slots() -> None:
    p = parse_command("llama-server -m a.gguf -c 16384 -ngl all")
    assert p.settings.n_parallel == 4 and p.settings.kv_unified
    assert "n_parallel" not in p.given
    assert any("4 slots" in w for w in p.warnings)
    p = parse_command("llama-server -m a.gguf -c 16384 -ngl all -np 1")
    assert p.settings.n_parallel == 1 and not p.settings.kv_unified
    assert p.warnings == []
    # llama-cli's default is one sequence
    assert parse_command("llama-cli -m a.gguf -c 16384 -ngl all").settings.n_parallel == 1


def test_missing_context_comes_from_the_model() -> None:
    base = Settings(n_ctx=2048)
    p = parse_command("llama-cli -m a.gguf", base=base)
    assert p.ctx_from_model and p.settings.n_ctx == 2048 and "n_ctx" not in p.given
    assert any("--fit may then shrink it" in w for w in p.warnings)
    assert any("no -ngl" in w for w in p.warnings)
    p = parse_command("llama-cli -m a.gguf -c 0 --fit off")
    assert p.ctx_from_model
    assert not any("shrink" in w for w in p.warnings)
    assert not any("-ngl" in w for w in p.warnings)  # without --fit, no -ngl means all


def test_later_flags_win_and_base_values_stay() -> None:
    base = Settings(n_batch=512, type_v="q8_0")
    p = parse_command("llama-cli -c 1000 -c 2000 -ctk q4_0", base=base)
    assert p.settings == base.replace(n_ctx=2000, type_k="q4_0")
    assert p.model_path is None


def test_booleans_both_ways_and_older_mmap_flags() -> None:
    p = parse_command("llama-server -np 2 -c 1 -kvu -no-kvu -nkvo -kvo --no-mmap")
    assert not p.settings.kv_unified and p.settings.kv_offload and not p.settings.mmap
    assert parse_command("llama-cli -c 1 --no-mmap --mmap").settings.mmap
    assert parse_command("llama-cli -c 1 -lm mlock").settings.mmap is False
    assert parse_command("llama-cli -c 1 -lm mmap+mlock").settings.mmap is True
    assert parse_command("llama-cli -c 1 --swa-full=false").settings.swa_full is False


def test_environment_assignments() -> None:
    p = parse_command("CUDA_VISIBLE_DEVICES=1 LLAMA_ARG_CTX_SIZE=8192 LLAMA_ARG_KV_OFFLOAD=0 "
                      "LLAMA_ARG_FLASH_ATTN=on LLAMA_ARG_SWA_FULL=true llama-server -np 1 -c 4096")
    assert p.extras["env"] == {"CUDA_VISIBLE_DEVICES": "1", "LLAMA_ARG_CTX_SIZE": "8192",
                               "LLAMA_ARG_KV_OFFLOAD": "0", "LLAMA_ARG_FLASH_ATTN": "on",
                               "LLAMA_ARG_SWA_FULL": "true"}
    s = p.settings
    assert s.n_ctx == 4096  # the command line overrides the environment
    assert not s.kv_offload and s.flash_attn is FlashAttn.ON and s.swa_full
    assert p.program == "llama-server"


@pytest.mark.parametrize(
    ("text", "program"),
    [("./build/bin/llama-server -c 1", "llama-server"),
     ("& 'C:\\Program Files\\llama\\llama-server.exe' -c 1", "llama-server"),
     ('"C:\\llama\\llama-cli.exe" -m "C:\\m\\a b.gguf" -c 1', "llama-cli"),
     ("-m a.gguf -c 1", None)],
)
def test_program_detection(text: str, program: str | None) -> None:
    assert parse_command(text).program == program


def test_windows_paths_survive() -> None:
    p = parse_command('llama-cli.exe -m "C:\\My Models\\qwen.gguf" -c 4096')
    assert p.model_path == "C:\\My Models\\qwen.gguf"
    p = parse_command("llama-cli.exe -m 'C:\\My Models\\it''s.gguf' -c 4096", "powershell")
    assert p.model_path == "C:\\My Models\\it's.gguf"


@pytest.mark.parametrize(
    ("text", "message"),
    [("llama-cli -c abc", "-c: expected a whole number"),
     ("llama-cli -c", "-c needs a value"),
     ("llama-cli -ctk q3_k", "not a KV cache type"),
     ("llama-cli -fa=maybe", "expected on, off or auto"),
     ("llama-cli -ngl many", "-ngl: expected a whole number"),
     ("llama-cli -ts a,b", "expected proportions"),
     ("llama-cli -b 0", "must be at least 1"),
     ("llama-cli -lm fast", "unknown load mode"),
     ("llama-cli -m 'a.gguf", "unclosed single quote"),
     ("llama-cli -m a.gguf; rm x", "paste a single command"),
     ("   ", "empty")],
)
def test_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(CommandParseError, match=message) as info:
        parse_command(text, "posix" if text.strip() else None)
    assert "\n" not in str(info.value)


def test_parse_args_takes_a_list() -> None:
    p = parse_args(["llama-cli", "-m", "a b.gguf", "-c", "512"])
    assert p.model_path == "a b.gguf" and p.settings.n_ctx == 512


# --- build -> render -> paste back gives the same settings -------------------------------------

SETTINGS = st.builds(
    Settings,
    n_ctx=st.integers(1, 1 << 20),
    type_k=st.sampled_from(CACHE_TYPE_NAMES),
    type_v=st.sampled_from(CACHE_TYPE_NAMES),
    flash_attn=st.sampled_from(list(FlashAttn)),
    n_gpu_layers=st.integers(ALL_LAYERS, 200),
    n_batch=st.integers(1, 8192),
    n_ubatch=st.integers(1, 4096),
    n_parallel=st.integers(1, 16),
    kv_offload=st.booleans(),
    swa_full=st.booleans(),
    kv_unified=st.booleans(),
    mmap=st.booleans(),
    tensor_split=st.lists(st.floats(0.01, 100, allow_nan=False), max_size=4).map(tuple),
    split_mode=st.sampled_from(list(SplitMode)),
    main_gpu=st.integers(0, 7),
    n_threads=st.sampled_from([AUTO_THREADS, 1, 6, 64]),
    mlock=st.booleans(),
    repack=st.booleans(),
    n_cpu_moe=st.sampled_from([0, 1, 8, 48, ALL_MOE_LAYERS]),
    override_tensor=st.lists(st.tuples(
        st.sampled_from([r"exps", r"blk\.(1[0-9])\.ffn_.*_exps", r"^output\.weight$", "",
                         r"attn_(q|k)\b", "模 $x"]),
        st.sampled_from(["CPU", "CUDA0", "RPC0[127.0.0.1:50052]"])), max_size=3).map(tuple),
    rpc_servers=st.lists(st.sampled_from(["127.0.0.1:50052", "gpu-box:50053", "10.0.0.2:1"]),
                         max_size=2, unique=True).map(tuple),
)
# (control characters other than tab and line breaks: refused for sh and cmd, see shellquote)
TEXT = st.text(st.one_of(st.characters(blacklist_categories=["Cs", "Cc"]),
                         st.sampled_from("\t\n\r")), min_size=1, max_size=30)
MARKS = st.text(st.sampled_from(" '\"$`\\é模\u2019;&|#"), min_size=1, max_size=6)
PATH = st.builds(lambda a, b, c: f"{a}{b}{c}.gguf", TEXT, MARKS, TEXT)


@pytest.mark.parametrize("shell", ["posix", "powershell", "cmd"])
@settings(max_examples=100, deadline=None)
@given(s=SETTINGS, path=PATH, prompt=TEXT, full=st.booleans(), multiline=st.booleans())
def test_round_trip_through_a_shell(
    shell: str, s: Settings, path: str, prompt: str, full: bool, multiline: bool
) -> None:
    if shell == "cmd":  # cmd cannot carry these (see shellquote)
        path = path.replace("%", "_").replace("\n", "_").replace("\r", "_")
        prompt = prompt.replace("%", "_").replace("\n", "_").replace("\r", "_")
    server = parse_command(
        render(llama_server_args(s, path, "0.0.0.0", 8081, full=full), shell, multiline=multiline),
        shell,
    )
    # --host/--port are passed on as given (kept flags), not modelled
    assert server.settings == s.replace(extra_args=("--host", "0.0.0.0", "--port", "8081"))
    assert server.model_path == path
    assert server.program == "llama-server"
    extras = {k: v for k, v in server.extras.items() if k != "load_mode"}
    assert extras == {"host": "0.0.0.0", "port": 8081}
    assert server.extras.get("load_mode", "none") in ("none", "mlock", "mmap+mlock")
    assert server.unknown == []
    cli = parse_command(
        render(llama_cli_args(s, path, system_prompt=prompt, full=full), shell,
               multiline=multiline),
        shell,
    )
    # llama-cli has no -kvu: that one setting cannot travel through it
    assert cli.settings == s.replace(kv_unified=False)
    assert {k: v for k, v in cli.extras.items() if k != "load_mode"} == {"system_prompt": prompt}
    assert cli.unknown == []


_TOKENS = st.one_of(
    st.sampled_from(["-m", "-c", "-ngl", "-ctk", "-ctv", "-fa", "-b", "-ub", "-np", "-ts",
                     "-lm", "--fit", "--port", "--swa-full", "-kvu", "-nkvo", "--no-mmap",
                     "--ctx_size=8", "--temp", "on", "auto", "all", "q8_0", "-1", "0", "3,1"]),
    st.text(max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(_TOKENS, max_size=10))
def test_any_token_list_parses_or_fails_with_a_parse_error(tokens: list[str]) -> None:
    try:
        p = parse_args(["llama-server", *tokens])
    except CommandParseError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(p.settings, Settings)
