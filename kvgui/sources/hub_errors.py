"""One line per way the Hub can fail, each saying what to do about it.

huggingface_hub raises a family of exceptions with multi-line messages meant for a traceback;
the window and the CLI need one sentence. ``hub_error`` turns any of them (and the HTTP
client's timeouts and connection errors) into a ``HubError`` whose ``kind`` lets the window
react (show the token field for "auth" and "gated", offer the cache for "network").
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import httpx2
from huggingface_hub import errors as hf_errors

log = logging.getLogger(__name__)

AUTH, GATED, NOT_FOUND, FORBIDDEN = "auth", "gated", "not_found", "forbidden"
RATE_LIMIT, TIMEOUT, NETWORK, OFFLINE, SERVER, CHECKSUM, DISK = (
    "rate_limit", "timeout", "network", "offline", "server", "checksum", "disk")


class HubError(Exception):
    """A failure talking to the Hub, as one line; ``kind`` is one of the constants above."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def needs_token(self) -> bool:
        return self.kind in (AUTH, GATED, FORBIDDEN)


def _host(exc: BaseException) -> str:
    request = getattr(exc, "request", None)
    try:
        url = str(request.url) if request is not None else ""
    except RuntimeError:  # httpx raises when an exception has no request attached
        url = ""
    return urlparse(url).hostname or "the Hub"


def hub_error(exc: BaseException, what: str) -> HubError:
    """The HubError for ``exc`` raised while fetching ``what`` (a repo, or repo/file)."""
    if isinstance(exc, HubError):
        return exc
    log.info("Hub request for %s failed: %r", what, exc)
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubError(OFFLINE, f"{what}: offline mode (HF_HUB_OFFLINE) is on and nothing "
                        "about it is cached here")
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubError(GATED, f"{what} is gated: accept its terms on its Hub page, then give "
                        "a token with read access (HF_TOKEN, or the token field)")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubError(NOT_FOUND, f"{what}: no such revision on the Hub")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return HubError(NOT_FOUND, f"{what}: no such file in the repo")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        message = exc.response.headers.get("X-Error-Message", "") if exc.response is not None \
            else ""
        if status == 401:
            if message == "Invalid credentials in Authorization header":
                return HubError(AUTH, f"{what}: the Hub refused the token (401): check HF_TOKEN "
                                "or the token field")
            return HubError(AUTH, f"{what}: not found, or private (401): for a private repo, "
                            "give a token with read access (HF_TOKEN, or the token field)")
        if status == 403:
            return HubError(FORBIDDEN, f"{what}: access forbidden (403): this token may not "
                            "read the repo")
        if status == 404 or isinstance(exc, hf_errors.RepositoryNotFoundError):
            return HubError(NOT_FOUND, f"{what}: no such repository on the Hub (404)")
        if status == 429:
            retry = exc.response.headers.get("Retry-After") if exc.response is not None else None
            when = f"retry in {retry} s" if retry else "retry in a minute"
            return HubError(RATE_LIMIT, f"{what}: the Hub is rate-limiting requests (429): "
                            f"{when}, or give a token for a higher limit")
        if status >= 500:
            return HubError(SERVER, f"{what}: the Hub answered {status}: try again later")
        return HubError(SERVER, f"{what}: the Hub answered {status}")
    if isinstance(exc, httpx2.TimeoutException):
        return HubError(TIMEOUT, f"{what}: no answer from {_host(exc)} in time (timeout): "
                        "check the connection, or raise HF_HUB_DOWNLOAD_TIMEOUT")
    if isinstance(exc, httpx2.RemoteProtocolError):
        return HubError(NETWORK, f"{what}: {_host(exc)} closed the connection early: "
                        "try again")
    if isinstance(exc, (httpx2.NetworkError, httpx2.TransportError)):
        return HubError(NETWORK, f"{what}: cannot reach {_host(exc)} ({exc}); with "
                        "HF_HUB_OFFLINE=1 kvgui uses what it has cached")
    return HubError(SERVER, f"{what}: {exc}")
