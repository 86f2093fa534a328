"""Which llama.cpp tool accepts which flag, read from the bundled llama.cpp's common/arg.cpp.

llama.cpp registers every option once, with the tools ("examples") it belongs to; a tool
rejects an option of another tool as an invalid argument. kvgui keeps the flags a user
pasted that it does not model (``Settings.extra_args``) and re-emits each one only for the
tools that accept it, so a pasted ``llama-server … --host 0.0.0.0`` exports to llama-server
with its --host and to llama-cli without it (and says so).

``parse_arg_cpp`` reads arg.cpp's source into the table; ``resources/llama_args.json`` is
that table for the bundled commit (packaging/make_llama_args.py writes it, and a test
re-reads the installed llama-cpp-python's arg.cpp and compares).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# the tools kvgui exports for, and their example in arg.cpp
TOOL_EXAMPLES: dict[str, str] = {
    "llama-cli": "CLI",
    "llama-server": "SERVER",
    "llama-completion": "COMPLETION",
    "llama-perplexity": "PERPLEXITY",
    "llama-fit-params": "FIT_PARAMS",
    "llama-bench": "BENCH",
}


@dataclass(frozen=True)
class ArgSpec:
    names: tuple[str, ...]  # every spelling, e.g. ("-t", "--threads")
    negations: tuple[str, ...]  # the "--no-…" forms of a switch
    takes_value: bool
    examples: frozenset[str]  # "COMMON", "SERVER", "CLI", …
    excludes: frozenset[str]
    env: str | None = None

    def accepted_by(self, example: str) -> bool:
        """arg.cpp's add_opt: in the example, or COMMON (every tool but download)."""
        if example in self.excludes:
            return False
        return example in self.examples or (
            "COMMON" in self.examples and example != "DOWNLOAD")


def _matching(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one at ``start`` (strings skipped)."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "'":
            i += 3 if text[i + 1] != "\\" else 4
            continue
        elif c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced brackets in arg.cpp")


_STRINGS = re.compile(r'"((?:[^"\\]|\\.)*)"')
_EXAMPLE = re.compile(r"LLAMA_EXAMPLE_(\w+)")


def parse_arg_cpp(source: str) -> list[ArgSpec]:
    """Every ``add_opt(common_arg(…))`` of arg.cpp, as the parser registers it."""
    specs = []
    for m in re.finditer(r"add_opt\(common_arg\(", source):
        end = _matching(source, m.end() - 1, "(", ")")  # common_arg( … )
        body = source[m.end():end - 1]
        call_end = _matching(source, m.start() + len("add_opt"), "(", ")")
        chain = source[end:call_end - 1]
        lists = []
        pos = 0
        while True:  # the leading brace lists: the names, then maybe the negations
            stripped = body[pos:].lstrip()
            if not stripped.startswith("{"):
                break
            start = len(body) - len(stripped)
            close = _matching(body, start, "{", "}")
            lists.append(tuple(_STRINGS.findall(body[start:close])))
            pos = close
            rest = body[pos:].lstrip()
            if not rest.startswith(","):
                break
            pos = len(body) - len(rest) + 1
        if not lists or not lists[0]:
            continue
        lam = body.find("[](")
        sig = body[lam:body.find(")", lam)] if lam >= 0 else ""
        takes_value = "value" in sig and "bool value" not in sig
        examples = frozenset(_EXAMPLE.findall(_call_args(chain, "set_examples"))) or frozenset(
            {"COMMON"})
        excludes = frozenset(_EXAMPLE.findall(_call_args(chain, "set_excludes")))
        env = _STRINGS.findall(_call_args(chain, "set_env"))
        specs.append(ArgSpec(lists[0], lists[1] if len(lists) > 1 else (), takes_value,
                             examples, excludes, env[0] if env else None))
    return specs


def _call_args(chain: str, method: str) -> str:
    i = chain.find(f".{method}(")
    if i < 0:
        return ""
    start = i + len(method) + 1
    return chain[start:_matching(chain, start, "(", ")")]


def to_json(specs: Iterable[ArgSpec], commit: str) -> dict[str, object]:
    return {"commit": commit, "options": [
        {"names": list(s.names), "negations": list(s.negations), "value": s.takes_value,
         "examples": sorted(s.examples), "excludes": sorted(s.excludes), "env": s.env}
        for s in specs]}


def _from_json(data: dict[str, object]) -> list[ArgSpec]:
    out = []
    for o in data["options"]:  # type: ignore[attr-defined]
        out.append(ArgSpec(tuple(o["names"]), tuple(o["negations"]), bool(o["value"]),
                           frozenset(o["examples"]), frozenset(o["excludes"]), o.get("env")))
    return out


def _resource() -> Path:
    try:
        from importlib import resources

        p = Path(str(resources.files("kvgui.resources").joinpath("llama_args.json")))
        if p.exists():
            return p
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return Path(__file__).resolve().parents[3] / "resources" / "llama_args.json"


class ArgTable:
    """Lookups over the table: the spec of a flag, and whether a tool accepts it."""

    def __init__(self, specs: Sequence[ArgSpec]) -> None:
        self.specs = tuple(specs)
        self._by_name: dict[str, ArgSpec] = {}
        for s in self.specs:
            for name in (*s.names, *s.negations):
                self._by_name.setdefault(name, s)

    def spec(self, flag: str) -> ArgSpec | None:
        name = flag.split("=", 1)[0]
        if name.startswith("--"):
            name = name.replace("_", "-")  # arg.cpp: "--long_name" is "--long-name"
        return self._by_name.get(name)

    def accepts(self, tool: str, flag: str) -> bool | None:
        """True / False, or None when the flag or the tool is unknown to this llama.cpp."""
        spec = self.spec(flag)
        example = TOOL_EXAMPLES.get(tool)
        if spec is None or example is None:
            return None
        return spec.accepted_by(example)

    def groups(self, args: Sequence[str]) -> Iterator[tuple[str, ...]]:
        """``args`` cut into (flag, value?) groups as llama.cpp would read them."""
        i = 0
        while i < len(args):
            flag = args[i]
            spec = self.spec(flag)
            takes = spec.takes_value and flag not in spec.negations if spec else (
                i + 1 < len(args) and not args[i + 1].startswith("-"))
            if takes and "=" not in flag and i + 1 < len(args):
                yield (flag, args[i + 1])
                i += 2
            else:
                yield (flag,)
                i += 1


@functools.lru_cache(maxsize=1)
def arg_table() -> ArgTable:
    """The bundled llama.cpp's table (resources/llama_args.json)."""
    return ArgTable(_from_json(json.loads(_resource().read_text(encoding="utf-8"))))


def split_for_tool(tool: str, extra_args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(what ``tool`` accepts, what it does not) of the kept flags, groups kept whole; a flag
    this llama.cpp does not know goes to both llama-cli and llama-server unchanged (it may
    be a newer build's)."""
    table = arg_table()
    kept: list[str] = []
    dropped: list[str] = []
    for group in table.groups(extra_args):
        (dropped if table.accepts(tool, group[0]) is False else kept).extend(group)
    return kept, dropped
