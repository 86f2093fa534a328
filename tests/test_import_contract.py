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
