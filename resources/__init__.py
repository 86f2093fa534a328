"""Data files shipped with kvgui (installed as the ``kvgui.resources`` package)."""
