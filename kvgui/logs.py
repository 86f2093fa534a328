"""The ``kvgui`` logger: every boundary that catches an exception logs it here, with its
traceback, to a rotating file in the user's log directory (Help ▸ Show log opens it), and
the CLI's ``-v`` / ``-vv`` also shows it on stderr.

The file is where a bug report starts: the user's one-line message says what went wrong,
the log says where.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOGGER = "kvgui"
LOG_FILE = "kvgui.log"
MAX_BYTES = 1 << 20  # 1 MiB a file, three files kept
BACKUPS = 3
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def log_dir() -> Path:
    """$KVGUI_LOG_DIR if set (tests, portable installs), else the platform's log dir."""
    from kvgui.core.config.appconfig import user_dir

    return user_dir("KVGUI_LOG_DIR", "log")


def log_path() -> Path:
    return log_dir() / LOG_FILE


def setup_logging(verbose: int = 0, *, to_file: bool = True) -> Path | None:
    """Configure the ``kvgui`` logger once per process; returns the log file (or None when
    it cannot be written: logging must never be the reason kvgui fails)."""
    root = logging.getLogger(LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, "_kvgui", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    path: Path | None = None
    if to_file:
        try:
            path = log_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES,
                                                      backupCount=BACKUPS, encoding="utf-8")
            fh.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
            fh.setFormatter(logging.Formatter(_FORMAT))
            fh._kvgui = True  # type: ignore[attr-defined]
            root.addHandler(fh)
        except OSError:
            path = None
    err = logging.StreamHandler()
    err.setLevel({0: logging.CRITICAL + 1, 1: logging.INFO}.get(verbose, logging.DEBUG))
    err.setFormatter(logging.Formatter("kvgui: %(levelname)s %(name)s: %(message)s"))
    err._kvgui = True  # type: ignore[attr-defined]
    root.addHandler(err)
    return path


def tail(n_lines: int = 400) -> str:
    """The last lines of the log file (for Help ▸ Show log)."""
    try:
        with open(log_path(), encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-n_lines:])
    except OSError:
        return ""
