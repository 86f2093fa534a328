"""The kvgui window (PySide6). Importing it first makes PySide6 safe on Python 3.11 (qtfix)."""

from kvgui import qtfix

qtfix.apply()
