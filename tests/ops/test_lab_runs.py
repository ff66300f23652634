"""The Jupyter server extension that serves runs/ (opslib.ops.lab_runs), against a real server.

The browser half (the dashboard's link clicked inside JupyterLab, then a report link in the
index) is in .ci/browser_check.py; here, the HTTP contract: the same request a page's relative
link makes (login cookie, no Referer, no XSRF token) is refused on /files/ and served on
/ops/runs/, to logged-in users only, without scripts, and never outside runs/.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from opslib.ops import lab_runs
from opslib.settings import Settings

REPORT = (
    '<!doctype html><html><head><title>Report A</title></head><body><a href="../index.html">index</a></body></html>'
)
INDEX = '<!doctype html><html><head><title>Run index</title></head><body><a href="2026/a.html">a</a></body></html>'


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Server:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.cookies = http.cookiejar.CookieJar()
        self.browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect())
        self.anonymous = urllib.request.build_opener(_NoRedirect())

    def get(self, path: str, *, logged_in: bool = True) -> tuple[int, dict[str, str], str]:
        opener = self.browser if logged_in else self.anonymous
        try:
            with opener.open(self.base + path, timeout=20) as response:
                return response.status, dict(response.headers), response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lab-root")
    runs = root / "runs"
    (runs / "2026").mkdir(parents=True)
    (runs / "index.html").write_text(INDEX)
    (runs / "2026" / "a.html").write_text(REPORT)
    (runs / "2026" / "a.ipynb").write_text("{}")
    (runs / ".hidden.html").write_text("hidden")
    (root / "secret.html").write_text("outside runs/")
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_", "JUPYTER"))}
    env.update(
        OPS_RUNS_DIR=str(runs),
        JUPYTER_CONFIG_DIR=str(root / ".cfg"),
        JUPYTER_DATA_DIR=str(root / ".data"),
        JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
    )
    log = (root / ".server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.jpserver_extensions={'opslib.ops.lab_runs': True}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        server = Server(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / ".server.log").read_text()
            try:
                # A token in the URL logs the browser in: a login cookie, as JupyterLab's first page gets.
                status, _, _ = server.get(f"/api/status?token={token}")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (root / ".server.log").read_text()
            time.sleep(0.5)
        assert any(c.name.startswith("username-") for c in server.cookies), "no login cookie"
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_relative_link_is_refused_on_files_and_served_on_ops_runs(server: Server) -> None:
    # What a click in JupyterLab's HTML viewer sends: the login cookie, no Referer, no _xsrf.
    status, _, body = server.get("/files/runs/2026/a.html")
    assert status == 403 and "Blocking request from unknown origin" in body  # the issue, unchanged
    status, headers, body = server.get("/ops/runs/2026/a.html")
    assert status == 200 and body == REPORT
    assert headers["Content-Type"].startswith("text/html")
    # The page's own links resolve under /ops/runs/ too: the index, by folder or by name.
    for path in ("/ops/runs/", "/ops/runs/index.html", "/ops/runs/2026/../index.html"):
        assert server.get(path)[2] == INDEX, path


def test_served_pages_run_no_script_and_cannot_be_framed_elsewhere(server: Server) -> None:
    _, headers, _ = server.get("/ops/runs/2026/a.html")
    policy = headers["Content-Security-Policy"]
    assert policy == lab_runs.CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in policy and "frame-ancestors 'self'" in policy and "script-src" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_only_logged_in_users_and_only_files_under_runs(server: Server) -> None:
    status, headers, _ = server.get("/ops/runs/2026/a.html", logged_in=False)
    assert status == 302 and "/login" in headers["Location"]
    assert server.get("/ops/runs/.hidden.html")[0] == 404
    assert server.get("/ops/runs/missing.html")[0] == 404
    # A path that climbs out of runs/, as a browser would not normalise it.
    host, port = server.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    cookie = "; ".join(f"{c.name}={c.value}" for c in server.cookies)
    connection.request("GET", "/ops/runs/..%2fsecret.html", headers={"Cookie": cookie})
    response = connection.getresponse()
    assert response.status in (403, 404) and b"outside runs/" not in response.read()
    connection.close()


def test_a_notebook_is_sent_as_a_download(server: Server) -> None:
    status, headers, _ = server.get("/ops/runs/2026/a.ipynb")
    assert status == 200 and headers["Content-Disposition"].startswith("attachment;")


class _FakeWebApp:
    def __init__(self) -> None:
        self.handlers: list[tuple[str, list[tuple[str, type, dict[str, str]]]]] = []

    def add_handlers(self, host: str, handlers: list[tuple[str, type, dict[str, str]]]) -> None:
        self.handlers.append((host, handlers))


@pytest.fixture
def environ() -> Iterator[None]:
    """The extension writes os.environ (for the server's kernels): put it back afterwards."""
    with mock.patch.dict(os.environ):
        for key in [k for k in os.environ if k.startswith("OPS_")]:
            del os.environ[key]
        yield


@pytest.mark.usefixtures("environ")
def test_kernels_of_the_server_learn_where_runs_are_served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPS_RUNS_DIR", "runs")  # relative: the kernels (in other folders) get it absolute
    app = SimpleNamespace(base_url="/user/ana/", web_app=_FakeWebApp(), log=logging.getLogger("test"))
    lab_runs._load_jupyter_server_extension(app)  # type: ignore[arg-type]
    ((_, [(pattern, handler, kwargs)]),) = app.web_app.handlers
    assert (pattern, handler) == ("/user/ana/ops/runs/(.*)", lab_runs.RunsFileHandler)
    assert kwargs == {"path": str(tmp_path / "runs"), "default_filename": "index.html"}
    assert os.environ["OPS_LAB_RUNS_URL"] == "/user/ana/ops/runs/"
    kernel = Settings()  # what a kernel started by that server reads
    assert (kernel.lab_runs_url, kernel.runs_dir) == ("/user/ana/ops/runs/", tmp_path / "runs")


@pytest.mark.usefixtures("environ")
def test_invalid_settings_leave_lab_running_without_the_route(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPS_CHROMA_PORT", "0")
    app = SimpleNamespace(base_url="/", web_app=_FakeWebApp(), log=logging.getLogger("test"))
    with caplog.at_level(logging.ERROR):
        lab_runs._load_jupyter_server_extension(app)  # type: ignore[arg-type]
    assert app.web_app.handlers == [] and "OPS_LAB_RUNS_URL" not in os.environ
    assert "runs/ not served" in caplog.text and "chroma_port" in caplog.text
