"""Running one endpoint replica: uvicorn serving ``create_app`` on a host and port."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from opslib.errors import Invalid
from opslib.infra.workspace import Workspace
from opslib.service.app import create_app
from opslib.settings import Settings


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


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the app is made: ``port`` 0 picks a free port, and the
    endpoint registers the port it really has."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeRefused(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    ws: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    endpoint_id: str | None = None,
    advertise: str | None = None,
    allow_anonymous: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (then pending feedback is flushed and the row marked stopped).
    Prints ``serving on <url>`` once the socket is bound (``port`` 0: a free one)."""
    if not ws.settings.serve_tokens and not allow_anonymous:
        raise ServeRefused(
            "serve_tokens: none configured, so every /v1 request would be refused — make one with "
            "`opsbench serve-token NAME` and set OPS_SERVE_TOKENS (or pass --allow-anonymous on a loopback host)"
        )
    if allow_anonymous and not is_loopback(host):
        raise ServeRefused(f"--allow-anonymous: only on a loopback host, not {host!r}")
    if not 0 <= port < 65536:
        raise ServeRefused(f"port {port}: must be 0-65535 (0: any free port)")
    sock = bind(host, port)
    port = int(sock.getsockname()[1])
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    app = create_app(
        ws,
        endpoint_id=endpoint_id or default_endpoint_id(port),
        address=advertise or url,
        allow_anonymous=allow_anonymous,
    )
    # One process per replica: scale by running more replicas (they share the stores).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=20)
    print(f"serving on {url}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class ServerProcess:
    """An endpoint replica running as a child process (the demo's, a test's)."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Stop it (SIGTERM: a clean stop that flushes pending feedback); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def spawn_server(
    settings: Settings, log_path: Path, *, allow_anonymous: bool = False, timeout_s: float = 120.0
) -> ServerProcess:
    """Start ``opsbench serve --port 0`` with these settings and wait until it is ready (``/readyz``
    200); its log lines go to ``log_path``."""
    env = {**os.environ, **settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "opslib.ops.cli", "serve", "--port", "0"]
    if allow_anonymous:
        command.append("--allow-anonymous")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)
    first: list[bytes] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: first.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=timeout_s)
    if not first or not first[0].startswith(b"serving on "):
        proc.kill()
        proc.wait(timeout=10)
        raise ServeRefused(
            f"the endpoint did not start (log: {log_path}): {log_path.read_text(errors='replace')[-1500:]}"
        )
    server = ServerProcess(first[0].decode().split()[-1], proc, log_path)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise ServeRefused(f"the endpoint never became ready (log: {log_path})")
            time.sleep(0.2)
