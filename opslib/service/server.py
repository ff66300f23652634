"""Running one endpoint replica: uvicorn serving ``create_app`` on a host and port."""

from __future__ import annotations

import ipaddress
import os
import socket

import uvicorn

from opslib.errors import Invalid
from opslib.infra.workspace import Workspace
from opslib.service.app import create_app


class ServeRefused(Invalid):
    """The endpoint cannot start as asked (e.g. no tokens configured on a public interface)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_endpoint_id(port: int) -> str:
    """Stable across restarts of the same replica (its row is reused), unique per host and port."""
    return f"{socket.gethostname()}:{port}"


def serve(
    ws: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    endpoint_id: str | None = None,
    advertise: str | None = None,
    allow_anonymous: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (then pending feedback is flushed and the row marked stopped)."""
    if not ws.settings.serve_tokens and not allow_anonymous:
        raise ServeRefused(
            "serve_tokens: none configured, so every /v1 request would be refused — make one with "
            "`opsbench serve-token NAME` and set OPS_SERVE_TOKENS (or pass --allow-anonymous on a loopback host)"
        )
    if allow_anonymous and not is_loopback(host):
        raise ServeRefused(f"--allow-anonymous: only on a loopback host, not {host!r}")
    if not 0 < port < 65536:
        raise ServeRefused(f"port {port}: must be 1-65535")
    address = advertise or f"http://{host}:{port}"
    app = create_app(
        ws,
        endpoint_id=endpoint_id or default_endpoint_id(port),
        address=address,
        allow_anonymous=allow_anonymous,
    )
    # One process per replica: scale by running more replicas (they share the stores).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=20)
