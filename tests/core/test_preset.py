"""kvgui's versioned JSON preset: save, load, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgui.core.commandline.parse import parse_command
from kvgui.core.commandline.preset import (
    PRESET_FORMAT,
    PRESET_VERSION,
    Preset,
    PresetError,
    load_preset,
    preset_from_command,
    preset_from_json,
    save_preset,
)
from kvgui.core.config.settings import ALL_LAYERS, FlashAttn, Settings
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES

SAMPLE = Preset(
    settings=Settings(n_ctx=32768, type_k="q8_0", type_v="q8_0", flash_attn=FlashAttn.ON,
                      n_gpu_layers=30, tensor_split=(3.0, 1.0), mmap=False,
                      extra_args=("--temp", "0.7")),
    model_path="/m/Qwen é 'x'.gguf",
    extras={"system_prompt": "Be brief.", "port": 8081},
)


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    save_preset(path, SAMPLE)
    assert load_preset(path) == SAMPLE
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == PRESET_FORMAT and data["version"] == PRESET_VERSION
    assert data["settings"]["flash_attn"] == "on"
    assert data["settings"]["tensor_split"] == [3.0, 1.0]


def test_minimal_preset_takes_defaults() -> None:
    p = preset_from_json('{"format": "kvgui-preset", "version": 1}')
    assert p == Preset(settings=Settings())


def _doc(**changes: Any) -> str:
    data: dict[str, Any] = json.loads(SAMPLE.to_json())
    for key, value in changes.items():
        if key.startswith("settings."):
            data["settings"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a kvgui preset"),
        ('{"format": "other", "version": 1}', "not a kvgui preset"),
        (_doc(version=2), "preset version 2 is newer"),
        (_doc(version="1"), "version must be a whole number"),
        (_doc(version=True), "version must be a whole number"),
        (_doc(model_path=3), "'model_path' must be a string"),
        (_doc(settings=[]), "'settings' must be an object"),
        (_doc(**{"settings.n_ctx": "4096"}), "settings.n_ctx must be a whole number"),
        (_doc(**{"settings.n_ctx": True}), "settings.n_ctx must be a whole number"),
        (_doc(**{"settings.n_ctx": 0}), "n_ctx must be at least 1"),
        (_doc(**{"settings.swa_full": 1}), "settings.swa_full must be true or false"),
        (_doc(**{"settings.flash_attn": "yes"}), "settings.flash_attn must be on, off or auto"),
        (_doc(**{"settings.type_k": "q3_k"}), "settings.type_k must be one of"),
        (_doc(**{"settings.tensor_split": "3,1"}), "settings.tensor_split must be a list"),
        (_doc(**{"settings.n_cpu_moe": -2}), "n_cpu_moe must be at least -1"),
        (_doc(**{"settings.n_cpu_moe": "all"}), "settings.n_cpu_moe must be a whole number"),
        (_doc(**{"settings.override_tensor": "exps=CPU"}), "override_tensor must be a list"),
        (_doc(**{"settings.override_tensor": [["exps"]]}), "is not a .pattern, buffer type"),
        (_doc(**{"settings.override_tensor": [["a,b", "CPU"]]}), "holds a ',' or '='"),
        (_doc(**{"settings.override_tensor": [["a", ""]]}), "is not a buffer type name"),
        (_doc(**{"settings.rpc_servers": "h:1"}), "rpc_servers must be a list"),
        (_doc(**{"settings.rpc_servers": ["h"]}), "is not host:port"),
        (_doc(**{"settings.n_ctxx": 5}), "unknown field 'n_ctxx'"),
        (_doc(extras=[]), "'extras' must be an object"),
        (_doc(extras={"port": "80"}), "extras.port has the wrong type"),
        (_doc(extras={"later": {"a": 1}}), "extras.later must be a string"),
        (_doc(extra_args="--temp 1"), "'extra_args' must be a list of strings"),
        (_doc(settings={"extra_args": "--temp 1"}),
         "settings.extra_args must be a list of strings"),
    ],
)
def test_bad_presets_fail_with_one_line(text: str, message: str) -> None:
    with pytest.raises(PresetError, match=message) as info:
        preset_from_json(text)
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"cannot read .*missing\.json"):
        load_preset(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PresetError, match=r"bad\.json is not UTF-8"):
        load_preset(bad)
    bad.write_text('{"format": "kvgui-preset", "version": 9}', encoding="utf-8")
    with pytest.raises(PresetError, match=r"bad\.json: preset version 9"):
        load_preset(bad)


def test_unknown_scalar_extras_are_kept() -> None:
    p = preset_from_json(_doc(extras={"later": "x", "n": 2, "none": None}))
    assert p.extras == {"later": "x", "n": 2, "none": None}


def test_from_an_imported_command() -> None:
    parsed = parse_command("llama-cli -m a.gguf -c 8192 -ctk q8_0 -sys hi --temp 0.5 -lm none")
    p = preset_from_command(parsed)
    assert p == Preset(settings=parsed.settings, model_path="a.gguf",
                       extras={"system_prompt": "hi"})
    assert p.extra_args == ("--temp", "0.5") == parsed.settings.extra_args
    assert preset_from_json(p.to_json()) == p


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
    tensor_split=st.lists(st.floats(0, 100, allow_nan=False), max_size=4).map(tuple),
    n_cpu_moe=st.integers(-1, 100),
    override_tensor=st.lists(st.tuples(st.text().filter(lambda t: not set(t) & set(",=")),
                                       st.sampled_from(["CPU", "CUDA1", "RPC0[h:1]"])),
                             max_size=3).map(tuple),
    rpc_servers=st.lists(st.sampled_from(["h:1", "10.0.0.2:50052"]), max_size=2,
                         unique=True).map(tuple),
)
TEXT = st.text(st.characters(blacklist_categories=["Cs"]))


@settings(max_examples=100, deadline=None)
@given(s=SETTINGS, path=st.none() | TEXT, prompt=TEXT,
       args=st.lists(TEXT, max_size=3).map(tuple))
def test_any_preset_round_trips(s: Settings, path: str | None, prompt: str,
                                args: tuple[str, ...]) -> None:
    p = Preset(settings=s.replace(extra_args=args), model_path=path,
               extras={"system_prompt": prompt})
    assert preset_from_json(p.to_json()) == p
