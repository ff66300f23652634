"""Running the endpoint: uvicorn serving ``create_app`` on a host and port.

One process by default. With ``serve_processes`` N > 1 (``opsbench serve --processes N``) the
process binds the socket, then supervises N worker processes serving that same socket — each a
replica of its own (its own ``serving_endpoints`` row, model and keyword index): one Python
process is bound to one core by the GIL, N processes use N cores behind one address."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from opslib.control.endpoints import live_endpoints
from opslib.db.engine import database_for
from opslib.errors import Invalid, OpsError
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace
from opslib.service.app import create_app
from opslib.settings import Settings

log = get_logger(__name__)

RESTART_DELAY_S = 1.0  # before a worker process that died is started again
QUICK_DEATH_S = 30.0  # a worker dying sooner than this after its start may be failing to start at all
MAX_QUICK_DEATHS = 3  # in a row for one replica: then the supervisor gives up instead of looping
STOP_TIMEOUT_S = 60.0  # uvicorn's 20 s graceful timeout + the follower's stop (feedback flush) + slack
SUPERVISE_TICK_S = 0.2


class ServeRefused(Invalid):
    """The endpoint cannot start as asked (e.g. no tokens configured on a public interface)."""


class ServeFailed(OpsError):
    """A worker process of ``opsbench serve --processes N`` kept dying as it started, or would
    not stop: the supervisor gave up (the worker's own log lines say why)."""


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
    listen_fd: int | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (then pending feedback is flushed and the row marked stopped).
    Prints ``serving on <url>`` once the socket is bound (``port`` 0: a free one). With
    ``serve_processes`` > 1 this process supervises that many worker processes instead.
    ``listen_fd``: run as one such worker, on the supervisor's socket (``endpoint_id`` and
    ``advertise`` come from the supervisor)."""
    if not ws.settings.serve_tokens and not allow_anonymous:
        raise ServeRefused(
            "serve_tokens: none configured, so every /v1 request would be refused — make one with "
            "`opsbench serve-token NAME` and set OPS_SERVE_TOKENS (or pass --allow-anonymous on a loopback host)"
        )
    if allow_anonymous and not is_loopback(host):
        raise ServeRefused(f"--allow-anonymous: only on a loopback host, not {host!r}")
    if not 0 <= port < 65536:
        raise ServeRefused(f"port {port}: must be 0-65535 (0: any free port)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if listen_fd is not None:
        sock = socket.socket(fileno=listen_fd)
        port = int(sock.getsockname()[1])
        _stop_when_orphaned()
        _run(ws, sock, endpoint_id or default_endpoint_id(port), advertise or _url(host, port), allow_anonymous)
        return
    sock = bind(host, port)
    port = int(sock.getsockname()[1])
    url = _url(host, port)
    if ws.settings.serve_processes == 1:
        _run(ws, sock, endpoint_id or default_endpoint_id(port), advertise or url, allow_anonymous, announce=url)
        return
    print(f"serving on {url}", flush=True)
    base_id = endpoint_id or default_endpoint_id(port)
    replicas = [Replica(i, f"{base_id}/{i}") for i in range(ws.settings.serve_processes)]

    def command(replica: Replica) -> list[str]:
        line = [sys.executable, "-m", "opslib.ops.cli", "serve", "--host", host, "--listen-fd", str(sock.fileno())]
        line += ["--endpoint-id", replica.endpoint_id, "--advertise", advertise or url]
        return [*line, "--allow-anonymous"] if allow_anonymous else line

    # The workers see exactly these settings (a --config file's values included) through OPS_*.
    env = {**os.environ, **ws.settings.as_env()}
    # The cores shared out: N workers each with torch's default of one thread per core would
    # oversubscribe them (an operator's own OMP_NUM_THREADS wins).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ws.settings.serve_processes)))
    try:
        Supervisor(replicas, command, env, sock.fileno()).run()
    finally:
        sock.close()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _run(
    ws: Workspace, sock: socket.socket, endpoint_id: str, address: str, allow_anonymous: bool, announce: str = ""
) -> None:
    """One replica in this process: the app on uvicorn, serving ``sock`` until SIGINT/SIGTERM."""
    app = create_app(ws, endpoint_id=endpoint_id, address=address, allow_anonymous=allow_anonymous)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=20)
    if announce:
        print(f"serving on {announce}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def _stop_when_orphaned() -> None:
    """A worker whose supervisor is gone (killed with -9) stops cleanly — flushing its feedback —
    rather than serve on unsupervised, holding the port a restarted supervisor needs."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the supervisor is gone: stopping", extra={"supervisor_pid": parent})
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's handler: the same clean stop as an operator's

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Replica:
    """One worker process of the supervisor, and how its recent starts went."""

    index: int
    endpoint_id: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    quick_deaths: int = 0


class Supervisor:
    """Keeps N worker processes serving one listening socket: starts them, restarts one that dies
    (after ``RESTART_DELAY_S``), forwards SIGTERM/SIGINT to them and waits for their clean stop.

    Workers are fresh interpreters (not ``os.fork``: this process may hold DB pools and threads),
    in their own process group, so a terminal's Ctrl-C reaches them once, through here: the first
    signal stops them gracefully (SIGTERM), a second forces them (SIGINT, as uvicorn's twice Ctrl-C)."""

    def __init__(
        self, replicas: list[Replica], command: Callable[[Replica], list[str]], env: dict[str, str], fd: int
    ) -> None:
        self.replicas, self.command, self.env, self.fd = replicas, command, env, fd
        self.signals: list[int] = []

    def run(self) -> None:
        """Until SIGTERM/SIGINT; raises ``ServeFailed`` when a worker keeps dying as it starts."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for replica in self.replicas:
                self._start(replica)
            while not self.signals:
                self._tick()
                time.sleep(SUPERVISE_TICK_S)
        finally:
            try:
                self._stop_all()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def _start(self, replica: Replica) -> None:
        replica.proc = subprocess.Popen(
            self.command(replica),
            env=self.env,
            pass_fds=(self.fd,),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,  # our stdout is the operator's (``serving on`` is its first line): theirs go to the log
            process_group=0,
        )
        replica.started_at = time.monotonic()
        log.info("worker started", extra={"endpoint_id": replica.endpoint_id, "pid": replica.proc.pid})

    def _tick(self) -> None:
        now = time.monotonic()
        for replica in self.replicas:
            if replica.proc is None:
                if now >= replica.restart_at:
                    self._start(replica)
                continue
            code = replica.proc.poll()
            if code is None:
                continue
            lived = now - replica.started_at
            replica.quick_deaths = replica.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
            if replica.quick_deaths >= MAX_QUICK_DEATHS:
                raise ServeFailed(
                    f"worker {replica.endpoint_id} died {replica.quick_deaths} times in a row within "
                    f"{QUICK_DEATH_S:.0f} s of starting (last: {_exit_text(code)}); giving up — its log lines say why"
                )
            log.warning(
                "worker died unexpectedly: restarting it",
                extra={
                    "endpoint_id": replica.endpoint_id,
                    "pid": replica.proc.pid,
                    "exit": _exit_text(code),
                    "lived_s": round(lived, 1),
                    "restart_in_s": RESTART_DELAY_S,
                },
            )
            replica.proc, replica.restart_at = None, now + RESTART_DELAY_S

    def _stop_all(self) -> None:
        """SIGTERM every worker (SIGINT on a further signal here: force) and wait for them all."""
        running = [r.proc for r in self.replicas if r.proc is not None and r.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        handled = len(self.signals)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while running := [proc for proc in running if proc.poll() is None]:
            if len(self.signals) > handled:
                handled = len(self.signals)
                for proc in running:
                    proc.send_signal(signal.SIGINT)
            if time.monotonic() > deadline:
                for proc in running:
                    proc.kill()
                    proc.wait(timeout=10)
                raise ServeFailed(
                    f"workers {[proc.pid for proc in running]} did not stop within {STOP_TIMEOUT_S:.0f} s: killed"
                )
            time.sleep(SUPERVISE_TICK_S)


@dataclass
class ServerProcess:
    """An endpoint running as a child process (the demo's, a test's): one replica, or the
    supervisor of several worker processes."""

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
    settings: Settings,
    log_path: Path,
    *,
    allow_anonymous: bool = False,
    processes: int | None = None,
    timeout_s: float = 120.0,
) -> ServerProcess:
    """Start ``opsbench serve --port 0`` with these settings and wait until it is ready (``/readyz``
    200; with several worker processes: every one of them ready in ``serving_endpoints``); its log
    lines go to ``log_path``. ``processes``: ``--processes N`` (default: ``serve_processes``)."""
    env = {**os.environ, **settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "opslib.ops.cli", "serve", "--port", "0"]
    if allow_anonymous:
        command.append("--allow-anonymous")
    if processes is not None:
        command += ["--processes", str(processes)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, env=env)
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
    workers = processes if processes is not None else settings.serve_processes
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200 and (
                    workers == 1 or ready_workers(settings, server.url, time.monotonic() - started) >= workers
                ):
                    return server
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise ServeRefused(f"the endpoint never became ready (log: {log_path})")
            time.sleep(0.2)


def ready_workers(settings: Settings, address: str, within_s: float) -> int:
    """Endpoints at ``address`` that reported themselves ready within the last ``within_s`` seconds
    and have not stopped (a load balancer's /readyz reaches one worker at a time, the DB all)."""
    with database_for(settings.resolved_db_url).read() as session:
        return sum(1 for e in live_endpoints(session, within_s) if e.address == address and e.ready)
