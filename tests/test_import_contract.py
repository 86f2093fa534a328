"""kvgui.core is Qt-free and llama.cpp-free: it must import with neither installed."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import kvgui.core

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'llama_cpp'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print('ok', len(sys.argv) - 1)
"""


def test_core_imports_without_qt_or_llama_cpp() -> None:
    names = [m.name for m in pkgutil.walk_packages(kvgui.core.__path__, "kvgui.core.")]
    names += ["kvgui.cli", "kvgui.commands.common", "kvgui.commands.estimate",
              "kvgui.commands.fit"]
    assert len(names) > 10
    r = subprocess.run([sys.executable, "-c", BLOCKER, *names], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ok {len(names)}"


def test_import_linter_contracts_hold() -> None:
    """The layering in pyproject.toml's [tool.importlinter]: the core imports neither Qt,
    llama_cpp nor the app layers; the runtime never imports the widgets; widgets and the
    controller stay apart. Function-level imports count too (import-linter reads them all)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, timeout=120,
                       cwd=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_core_never_imports_by_name_what_it_must_not() -> None:
    """importlib.import_module("llama_cpp") would slip past the static contracts."""
    import ast
    from pathlib import Path

    core = Path(kvgui.core.__path__[0])
    forbidden = ("PySide6", "shiboken6", "pyqtgraph", "llama_cpp", "kvgui.ui", "kvgui.runtime")
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                value = node.args[0].value
                if name in ("import_module", "__import__") and isinstance(value, str):
                    assert not value.startswith(forbidden), f"{path}: imports {value}"
