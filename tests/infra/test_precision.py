"""Device and precision: chosen per machine, recorded per model version and index, honoured by
every encode."""

from pathlib import Path

import numpy as np
import pytest
from helpers import corpus_ready

import opslib.infra.precision as precision
from opslib.corpus.search import search
from opslib.db.models import ModelVersion, VectorIndexEntry
from opslib.infra.embedding import Purpose, load_sentence_transformer
from opslib.infra.model_artifacts import read_manifest, register_model
from opslib.infra.precision import (
    MIN_COSINE,
    PrecisionInvalid,
    choose_precision,
    cpu_bf16_flag,
    resolve_device,
    training_mixed_precision,
)
from opslib.infra.workspace import Workspace
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU that reports native bfloat16 (AMX), whatever this machine has."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx512f", "amx_bf16"}))


@pytest.fixture
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "avx512f"}))


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for flags, expected in [
        ({"avx2", "avx512_bf16"}, "avx512_bf16"),
        ({"amx_tile", "amx_bf16", "avx512_bf16"}, "amx_bf16"),
        ({"fp", "asimd", "bf16"}, "bf16"),  # Arm's Features line
        ({"avx2", "avx512f", "avx512_vnni"}, None),
        (set(), None),
    ]:
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert cpu_bf16_flag() == expected, flags


def test_this_machines_flags_are_read() -> None:
    precision.cpu_flags.cache_clear()
    flags = precision.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert "fpu" in flags or "fp" in flags  # every x86 / Arm Linux CPU reports one of them


def test_devices_resolve_to_what_the_machine_has() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(PrecisionInvalid, match=r"device 'cuda' \(OPS_DEVICE\): not available"):
            resolve_device("cuda")
    with pytest.raises(PrecisionInvalid, match="must be one of"):
        resolve_device("tpu")  # type: ignore[arg-type]


def test_fp32_needs_no_check(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "check_min_cosine", lambda *a: pytest.fail("no check for fp32"))
    choice = choose_precision("fp32", "cpu", tiny_model_dir)
    assert (choice.precision, choice.min_cosine) == ("fp32", None)


def test_auto_on_a_cpu_without_native_bf16_is_fp32(plain_cpu: None, tiny_model_dir: Path) -> None:
    choice = choose_precision("auto", "cpu", tiny_model_dir)
    assert choice.precision == "fp32" and "no native bfloat16" in choice.reason


def test_auto_takes_bf16_when_the_start_up_check_passes(bf16_cpu: None, tiny_model_dir: Path) -> None:
    choice = choose_precision("auto", "cpu", tiny_model_dir)
    assert choice.min_cosine is not None and choice.min_cosine >= MIN_COSINE
    assert choice.precision == "bf16" and "amx_bf16" in choice.reason
    assert choice.as_record()["check_bound"] == MIN_COSINE


def test_auto_falls_back_to_fp32_when_the_check_fails(
    bf16_cpu: None, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated: a model whose bf16 vectors drift from its fp32 ones.
    monkeypatch.setattr(precision, "check_min_cosine", lambda path, device, p: 0.93)
    choice = choose_precision("auto", "cpu", tiny_model_dir)
    assert choice.precision == "fp32"
    assert choice.min_cosine == 0.93 and "start-up check failed (min cosine 0.9300 < 0.995)" in choice.reason


def test_an_explicit_precision_stands_and_its_check_is_recorded(tiny_model_dir: Path) -> None:
    choice = choose_precision("bf16", "cpu", tiny_model_dir)
    assert choice.precision == "bf16" and choice.reason == "OPS_ENCODE_PRECISION=bf16"
    assert choice.min_cosine is not None and 0.9 < choice.min_cosine <= 1.0 + 1e-6


def test_the_check_compares_the_same_texts_at_both_precisions(tiny_model_dir: Path) -> None:
    cosine = precision.check_min_cosine(tiny_model_dir, "cpu", "bf16")
    assert precision.check_min_cosine(tiny_model_dir, "cpu", "fp32") == pytest.approx(1.0, abs=1e-6)
    assert cosine < 1.0 - 1e-7  # bfloat16 does move the vectors a little


def test_training_autocasts_to_the_native_half_precision(bf16_cpu: None) -> None:
    """bf16 on a CPU that computes it natively (measured 2x faster per epoch), fp32 when asked."""
    assert training_mixed_precision("auto", "cpu") == "bf16"
    assert training_mixed_precision("bf16", "cpu") == "bf16"
    assert training_mixed_precision("fp32", "cpu") == "fp32"
    assert training_mixed_precision("fp16", "cpu") == "fp32"  # no native fp16 arithmetic on CPUs
    assert training_mixed_precision("auto", "mps") == "fp32"
    assert training_mixed_precision("fp32", "cuda") == "fp32"


def test_training_stays_fp32_on_a_cpu_without_native_bf16(plain_cpu: None) -> None:
    assert training_mixed_precision("auto", "cpu") == "fp32"
    assert training_mixed_precision("bf16", "cpu") == "fp32"


def _workspace(settings: Settings, encode_precision: str) -> Workspace:
    return Workspace(settings.model_copy(update={"encode_precision": encode_precision}))


def test_the_precision_is_recorded_with_the_model_and_its_index(settings: Settings, tiny_candidate_dir: Path) -> None:
    ws = _workspace(settings, "fp32")
    init_workspace(ws)
    corpus_ready(ws)
    register_model(ws, "tiny-bf16", tiny_candidate_dir, base_model_version="tiny-base", precision=None)
    with ws.db.read() as session:
        assert session.get(ModelVersion, "tiny-base").encode_precision == "fp32"
        assert session.get(ModelVersion, "tiny-bf16").encode_precision == "fp32"  # the settings said fp32
        assert {e.encode_precision for e in session.query(VectorIndexEntry)} == {"fp32"}
    assert read_manifest(ws, "tiny-base").encode_precision == "fp32"
    bf16 = _workspace(settings, "bf16")
    register_model(bf16, "tiny-cand-bf16", tiny_candidate_dir, base_model_version="tiny-base")
    manifest = read_manifest(bf16, "tiny-cand-bf16")
    assert manifest.encode_precision == "bf16" and manifest.precision_choice["reason"] == "OPS_ENCODE_PRECISION=bf16"
    with bf16.db.read() as session:
        assert session.get(ModelVersion, "tiny-cand-bf16").encode_precision == "bf16"


def test_a_query_against_an_fp32_index_is_encoded_in_fp32_under_a_bf16_default(
    settings: Settings, tiny_model_dir: Path
) -> None:
    built = _workspace(settings, "fp32")  # the index was built when fp32 was the default
    init_workspace(built)
    corpus_ready(built)
    ws = _workspace(settings, "bf16")  # the default changed since
    query = "how do I go about parsing dates"
    assert ws.embeddings.load("tiny-base").precision == "fp32"
    vector = ws.embeddings.embed([query], "tiny-base", Purpose.SEARCH)[0]
    fp32 = load_sentence_transformer(tiny_model_dir, "cpu", "fp32").encode([query], normalize_embeddings=True)[0]
    bf16 = load_sentence_transformer(tiny_model_dir, "cpu", "bf16").encode([query], normalize_embeddings=True)[0]
    assert np.array_equal(vector, fp32) and not np.allclose(vector, bf16, atol=1e-6)
    response = search(ws, query, user_id="u", project_id="mini-alpha")
    assert response.chunks and response.active_index_name == "idx-tiny-base"  # the fp32 index, an fp32 query


def test_vectors_at_half_precision_are_renormalised(settings: Settings) -> None:
    ws = _workspace(settings, "bf16")
    init_workspace(ws)
    assert ws.embeddings.load("tiny-base").precision == "bf16"
    vectors = ws.embeddings.embed(["hello world", "검색 엔진"], "tiny-base", Purpose.SEARCH)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
