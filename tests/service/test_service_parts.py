"""The endpoint's parts without a server process: micro-batching, tokens, the textfile metrics,
readiness, the histogram quantile."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from opslib.infra.embedding import EmbeddingRefused, Purpose
from opslib.infra.workspace import Workspace
from opslib.ops.cli import main
from opslib.service.auth import authenticate, new_token, token_hash
from opslib.service.client import histogram_quantile
from opslib.service.encoder import BatchingEncoder
from opslib.service.follower import readiness


@pytest.mark.sqlite_only(reason="encoding does not touch the database beyond the purpose check")
def test_concurrent_query_encodes_share_batches_and_match_single_encodes(ws: Workspace) -> None:
    model = ws.settings.base_model_version
    encoder = BatchingEncoder(ws.embeddings, workers=1, wait_s=0.05)
    texts = [f"query number {i}" for i in range(12)]
    results: dict[int, np.ndarray] = {}
    try:
        threads = [
            threading.Thread(target=lambda i=i: results.update({i: encoder.encode(texts[i], model)})) for i in range(12)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert encoder.encoded == 12 and encoder.batches < 12  # some requests shared a forward pass
        alone = ws.embeddings.embed(texts, model, Purpose.SEARCH)
        for i in range(12):
            assert np.allclose(results[i], alone[i], atol=1e-5)
        with pytest.raises(EmbeddingRefused):  # the endpoint's refusal reaches the waiting request
            encoder.encode("x", "not-the-active-model")
    finally:
        encoder.close()


def test_tokens_are_stored_hashed_and_matched_in_full() -> None:
    token, entry = new_token("app", ["search"])
    assert token.startswith("bst_") and entry.sha256 == token_hash(token) and token not in entry.model_dump_json()
    other_token, other = new_token("other", ["feedback"])
    assert authenticate([entry, other], token) == entry
    assert authenticate([entry, other], other_token) == other
    assert authenticate([entry, other], token[:-1]) is None and authenticate([], token) is None


def test_histogram_quantile_reads_cumulative_buckets() -> None:
    buckets = [(0.01, 10.0), (0.05, 90.0), (0.1, 99.0), (float("inf"), 100.0)]
    assert histogram_quantile(buckets, 0.5) == 0.05 and histogram_quantile(buckets, 0.95) == 0.1
    assert histogram_quantile([(float("inf"), 0.0)], 0.95) is None


def test_metrics_textfile_holds_the_batch_figures(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "biblio.prom"
    for name, value in ws.settings.as_env().items():  # the CLI reads this workspace's settings
        monkeypatch.setenv(name, value)
    assert main(["metrics", "--textfile", str(target)]) == 0
    assert main(["metrics"]) == 0
    text = target.read_text()
    for name in (
        "biblio_batch_figures_up 1.0",
        'biblio_release_status{status="STABLE"} 1.0',
        "biblio_runs",
        "biblio_queue_backlog 0.0",
    ):
        assert name in text, name
    assert 'biblio_active_info{index_name="idx-tiny-base",model_version="tiny-base"} 1.0' in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def test_readiness_names_what_is_missing(ws: Workspace) -> None:
    ws = Workspace(ws.settings)  # a fresh process's view: nothing loaded yet
    state = readiness(ws)
    assert not state.ready and "not loaded here yet" in state.reason  # this process never loaded it
    ws.embeddings.load(ws.settings.base_model_version)
    assert readiness(ws).ready
    ws.vectors.drop("idx-tiny-base")
    state = readiness(ws)
    assert not state.ready and "idx-tiny-base does not exist" in state.reason


def test_serve_refuses_a_bad_process_count_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workspace", str(tmp_path / "ws"), "serve", "--processes", "0"]) == 2
    error = capsys.readouterr().err
    assert "serve_processes" in error and "greater than or equal to 1" in error, error
    assert not (tmp_path / "ws").exists()  # refused before anything was made
