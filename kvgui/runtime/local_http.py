"""The one HTTP client kvgui uses for the llama-server it started on 127.0.0.1 (and its
``/props`` read, shared by the chat and the window's health poller).

Two httpx defaults are wrong for that server, so every client for it is built here:

- ``verify``: httpx builds a TLS context for every client, loading certifi's CA bundle —
  40–100 ms of CPU here, paid on the path from "the model is ready" to the first token shown.
  kvgui's server speaks plain HTTP on the loopback, so no TLS context is needed at all.
- ``trust_env``: httpx routes requests through ``HTTP_PROXY``/``ALL_PROXY`` from the
  environment unless ``NO_PROXY`` names the host; a user behind a corporate proxy would send
  the chat with their local model to the proxy (which cannot reach this machine's loopback).
"""

from __future__ import annotations

from typing import Any

import httpx


def local_client(timeout: httpx.Timeout | float | None = 5.0) -> httpx.Client:
    """An httpx client for ``http://127.0.0.1:PORT`` (no TLS context, no proxies)."""
    return httpx.Client(timeout=timeout, verify=False, trust_env=False)


def read_props(client: httpx.Client, url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /props``: the chat template, the context per slot, the build."""
    r = client.get(url + "/props", timeout=timeout)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data
