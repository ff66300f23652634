"""bench/quality_loop.py's exit decision (what CI's quality step fails on), without a model."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from opslib.db.models import Decision

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "quality_loop.py"


@pytest.fixture(scope="module")
def quality_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality_loop", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def result(decision: Decision | None, candidate: float = 0.5) -> dict[str, Any]:
    if decision is None:  # the run failed before evaluation
        return {"evaluation": None}
    metrics = {m: candidate for m in ("recall_at_5", "mrr_at_5", "ndcg_at_5")}
    return {"evaluation": SimpleNamespace(overall_decision=decision, quality_metrics={"candidate": metrics})}


def test_pass_then_fail_needs_both_verdicts(quality_loop: ModuleType) -> None:
    check = quality_loop.check
    assert check("pass-then-fail", result(Decision.PASS), result(Decision.FAIL))[0]
    assert not check("pass-then-fail", result(Decision.FAIL), result(Decision.FAIL))[0]
    assert not check("pass-then-fail", result(Decision.PASS), result(Decision.PASS))[0]
    assert not check("pass-then-fail", result(None), result(Decision.FAIL))[0]


def test_control_fails_needs_a_failing_control_below_the_honest_candidate(quality_loop: ModuleType) -> None:
    check = quality_loop.check
    assert check("control-fails", result(Decision.FAIL, 0.6), result(Decision.FAIL, 0.4))[0]
    assert check("control-fails", result(Decision.PASS, 0.6), result(Decision.FAIL, 0.4))[0]
    ok, why = check("control-fails", result(Decision.PASS, 0.4), result(Decision.FAIL, 0.4))
    assert not ok and "not above the control on recall_at_5, mrr_at_5, ndcg_at_5" in why
    assert not check("control-fails", result(Decision.PASS, 0.6), result(Decision.PASS, 0.4))[0]
    assert not check("control-fails", result(None), result(Decision.FAIL, 0.4))[0]
    assert not check("control-fails", result(Decision.PASS, 0.6), result(None))[0]
