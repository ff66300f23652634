"""The backend-coverage plugin fails a run whose PostgreSQL half did not run (inner pytest runs)."""

import pytest

INNER_TESTS = """
import pytest

@pytest.mark.on_postgresql
def test_pg_one():
    pass

@pytest.mark.on_postgresql
def test_pg_two():
    pass

def test_sqlite_one():
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, **env: str) -> pytest.RunResult:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_inprocess("-p", "backend_coverage", "-p", "no:xdist")


def test_counts_per_backend_without_a_minimum(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, INNER_TESTS)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["sqlite: 1 passed", "postgresql: 2 passed"])


def test_enough_postgresql_passes_is_green(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://unused@127.0.0.1/none"
    result = _run(pytester, monkeypatch, INNER_TESTS, OPS_TEST_MIN_POSTGRES="2", OPS_TEST_POSTGRES_URL=url)
    assert result.ret == pytest.ExitCode.OK


def test_too_few_postgresql_passes_fail_a_green_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = pytester.path / "counts.json"
    result = _run(
        pytester,
        monkeypatch,
        INNER_TESTS,
        OPS_TEST_MIN_POSTGRES="3",
        OPS_TEST_POSTGRES_URL="postgresql://unused@127.0.0.1/none",
        OPS_TEST_BACKEND_COUNTS=str(counts),
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*only 2 PostgreSQL tests passed (at least 3 expected)*"])
    assert counts.read_text() == '{"postgresql": {"passed": 2}, "sqlite": {"passed": 1}}'


def test_a_skipped_postgresql_test_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    source = INNER_TESTS + "\n@pytest.mark.on_postgresql\ndef test_pg_skipped():\n    pytest.skip('no server')\n"
    result = _run(pytester, monkeypatch, source, OPS_TEST_MIN_POSTGRES="1", OPS_TEST_POSTGRES_URL="postgresql://x@h/d")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 PostgreSQL tests were skipped*"])


def test_a_minimum_without_a_postgresql_url_refuses_to_start(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPS_TEST_POSTGRES_URL", raising=False)
    result = _run(pytester, monkeypatch, INNER_TESTS, OPS_TEST_MIN_POSTGRES="1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*OPS_TEST_MIN_POSTGRES=1 but OPS_TEST_POSTGRES_URL is unset*"])
