"""Keep PySide6 6.12 from killing the interpreter on Python < 3.12.

PySide6 6.12 is built as if None, True and False were immortal (they are from Python 3.12,
PEP 683): its wrappers return them without taking a reference. On Python 3.11 every call of
a void Qt method (``setText``, ``update``, a slot's return ...) takes one reference from None,
and every ``Signal.emit`` one from True; a few thousand slider steps later the interpreter
aborts with "none_dealloc" / "bool_dealloc". Measured, not assumed from version numbers: if
a void call is seen to leak, the three singletons get a reference count no leak can exhaust
(what Python 3.12 does for them). Applied when ``kvgui.ui`` or a Qt module of
``kvgui.runtime`` is imported (the runtime never imports the ui).
"""

from __future__ import annotations

import ctypes
import sys

_HEADROOM = 1 << 40  # references added: at a million leaked per second, 35 years

_applied = False


def void_call_leaks_none() -> bool:
    """Does a void Qt method call drop a reference to None here?"""
    from PySide6.QtCore import QObject

    obj = QObject()
    before = sys.getrefcount(None)
    for _ in range(64):
        obj.setObjectName("probe")
    leaked = before - sys.getrefcount(None)
    if leaked > 0:  # give back what the probe took
        for _ in range(leaked):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))
    return leaked >= 48


def apply() -> bool:
    """Immortalize None/True/False if this PySide6 leaks them; True when it did."""
    global _applied
    if _applied or sys.version_info >= (3, 12):
        return _applied
    if not void_call_leaks_none():
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _HEADROOM
    _applied = True
    return True
