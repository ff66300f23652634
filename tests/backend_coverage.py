"""pytest plugin: count what ran on each Metadata DB backend, and fail a run whose PostgreSQL half
went missing.

Tests parametrised onto PostgreSQL carry the ``on_postgresql`` marker (tests/conftest.py). At the
end of the session the controller (not the xdist workers) prints passed/skipped/failed per backend
and, when ``OPS_TEST_MIN_POSTGRES`` is set (CI sets it), fails the session if fewer PostgreSQL tests
passed than that or any of them was skipped — and refuses to start without
``OPS_TEST_POSTGRES_URL``: a green run must not hide a PostgreSQL half that did not run. ``OPS_TEST_BACKEND_COUNTS=<path>`` also writes the counts as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

POSTGRES_MARKER = "on_postgresql"


def _backend(report: pytest.TestReport) -> str:
    return "postgresql" if POSTGRES_MARKER in report.keywords else "sqlite"


class BackendCoverage:
    def __init__(self, minimum_postgres: int | None, counts_path: Path | None) -> None:
        self.minimum_postgres = minimum_postgres
        self.counts_path = counts_path
        self.counts: dict[str, Counter[str]] = {"sqlite": Counter(), "postgresql": Counter()}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # One outcome per test: the call phase, or setup when the test never got that far.
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.counts[_backend(report)][report.outcome] += 1

    def problems(self) -> list[str]:
        if self.minimum_postgres is None:
            return []
        postgres = self.counts["postgresql"]
        found = []
        if postgres["passed"] < self.minimum_postgres:
            found.append(
                f"only {postgres['passed']} PostgreSQL tests passed (at least {self.minimum_postgres} expected)"
            )
        if postgres["skipped"]:
            found.append(f"{postgres['skipped']} PostgreSQL tests were skipped")
        return found

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.counts_path is not None:
            self.counts_path.write_text(json.dumps({k: dict(v) for k, v in self.counts.items()}, sort_keys=True))
        if self.problems() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not any(self.counts.values()):  # --collect-only, or nothing selected
            return
        terminalreporter.section("tests per Metadata DB backend")
        for backend, counter in self.counts.items():
            outcome = ", ".join(f"{n} {what}" for what, n in sorted(counter.items())) or "none ran"
            terminalreporter.write_line(f"{backend}: {outcome}")
        for problem in self.problems():
            terminalreporter.write_line(f"FAILED backend coverage: {problem}", red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{POSTGRES_MARKER}: parametrised onto PostgreSQL (set by conftest)")
    minimum = os.environ.get("OPS_TEST_MIN_POSTGRES")
    if minimum and not os.environ.get("OPS_TEST_POSTGRES_URL"):
        raise pytest.UsageError(f"OPS_TEST_MIN_POSTGRES={minimum} but OPS_TEST_POSTGRES_URL is unset")
    if hasattr(config, "workerinput"):  # an xdist worker: its reports reach the controller, which counts
        return
    counts = os.environ.get("OPS_TEST_BACKEND_COUNTS")
    config.pluginmanager.register(
        BackendCoverage(int(minimum) if minimum else None, Path(counts) if counts else None),
        "backend-coverage-counter",
    )
