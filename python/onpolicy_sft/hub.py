"""Fail fast on a hub name the hub cannot serve.

Without a network, transformers and datasets retry for about 25 s before they
give up with an error that does not say what to do. :func:`require_hub`
decides in a few seconds: the hub answers (go ahead), or a copy is cached
(go ahead offline), or it raises :class:`HubUnreachableError` telling the user
to pass a local path.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

from onpolicy_sft.errors import HubUnreachableError

__all__ = ["hub_reachable", "is_hub_name", "require_hub"]

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
_probe: dict[str, str | None] = {}  # endpoint -> None (reachable) or why not


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_env() -> str | None:
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name} is set"
    return None


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub endpoint accepts a connection, else why not (checked once per process)."""
    why = _offline_env()
    if why:
        return why
    endpoint = _endpoint()
    if endpoint not in _probe:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout_s).close()
            _probe[endpoint] = None
        except OSError as exc:
            _probe[endpoint] = f"{parts.hostname}:{port} does not answer ({exc.strerror or exc})"
    return _probe[endpoint]


def is_hub_name(name: str) -> bool:
    """'org/name' or 'name': no leading '.', '/' or '~', at most one slash, not a local path."""
    return (
        bool(name)
        and name.count("/") <= 1
        and not name.startswith((".", "/", "~"))
        and not os.path.exists(os.path.expanduser(name))
    )


def _cached(name: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    snapshots = os.path.join(
        constants.HF_HUB_CACHE, f"{repo_type}s--{name.replace('/', '--')}", "snapshots"
    )
    if os.path.isdir(snapshots) and os.listdir(snapshots):
        return True
    if repo_type == "dataset":
        home = os.environ.get(
            "HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        )
        cache = os.environ.get("HF_DATASETS_CACHE", os.path.join(home, "datasets"))
        return os.path.isdir(os.path.join(cache, name.replace("/", "___")))
    return False


def _go_offline() -> None:
    """Make transformers and datasets read their caches without retrying the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:  # both read the variable once, when imported
            sys.modules[module].HF_HUB_OFFLINE = True


def require_hub(
    name: str, *, repo_type: str, flag: str, what: str | None = None, fix: str | None = None
) -> None:
    """Return when ``name`` can be loaded from the hub or its cache; else raise.

    The message starts with ``what`` (default: "``flag`` 'name' is a hub ... name") and
    ends with ``fix`` (default: pass a local path to ``flag``).
    """
    why = hub_reachable()
    if why is None:
        return
    if _cached(name, repo_type):
        _go_offline()
        return
    what = what or f"{flag} {name!r} is a hub {repo_type} name"
    fix = fix or f"download it on a machine with a network and pass its local path to {flag}"
    raise HubUnreachableError(
        f"{what}, but the hub ({_endpoint()}) cannot be reached ({why}) and no copy is "
        f"cached; {fix}"
    )
