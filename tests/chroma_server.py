"""A real Chroma server (``chroma run``) on loopback for the tests that need one, as a fixture."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# Chroma 1.x serves its API under /api/v2 (/api/v1 answers 410 Gone); the heartbeat is Chroma's own.
CHROMA_HEARTBEAT = "/api/v2/heartbeat"


def _listening_port(pid: int, host: str) -> int | None:
    """The TCP port process ``pid`` (or a child of it) listens on at ``host``; None if none yet."""
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == host:
                    return int(conn.laddr.port)
    except psutil.NoSuchProcess:  # it exited: the caller finds out from poll()
        pass
    return None


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a loopback server the fixtures started: SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _answers_chroma_heartbeat(host: str, port: int) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with direct.open(f"http://{host}:{port}{CHROMA_HEARTBEAT}", timeout=5) as response:
            return response.status == 200 and isinstance(json.load(response).get("nanosecond heartbeat"), int)
    except (OSError, ValueError, http.client.HTTPException):  # refused, not HTTP, not Chroma's JSON
        return False


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``chroma run`` on loopback, port 0: the server binds a free port itself, so no other process
    can take it between a pick and the bind. Its port is read from the server process's own
    listening socket (Chroma logs ``127.0.0.1:0``), and it is ready once Chroma's heartbeat answers
    there — another program listening on some port can neither be mistaken for it nor pass."""
    host = "127.0.0.1"
    root = tmp_path_factory.mktemp("chroma-server")
    log_path = root / "chroma.log"
    chroma = Path(sys.executable).parent / "chroma"
    command = [str(chroma), "run", "--path", str(root / "data"), "--host", host, "--port", "0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        port: int | None = None
        deadline = time.monotonic() + 60
        while port is None or not _answers_chroma_heartbeat(host, port):
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"chroma server not ready in 60 s (port {port}): {log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
            port = port or _listening_port(proc.pid, host)
        yield host, port
    finally:
        stop_server(proc)
