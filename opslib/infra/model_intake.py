"""Validating a model an operator delivers, before anything is registered.

``stage_model`` copies a sentence-transformers folder — a local path or any fsspec URL of one —
into a private staging folder (its VCS leftovers and any ``model_manifest.json`` of another
workspace left out: the workbench writes its own). ``inspect_model`` then checks it the way the
endpoint will use it: it must load **offline** from that folder alone (the Hugging Face offline
switches are set; a module kept elsewhere, weights that are not there, code to fetch — each is
"needs a download"), and a smoke encode must give one finite, non-zero vector per text in the
model's stated dimension. What it measured (dimension, max sequence length, the smoke texts) is
recorded in the model's manifest.

Every refusal is ``ModelIntakeRefused`` naming the field (``source``) and the reason.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from opslib.errors import Invalid
from opslib.infra.embedding import SMOKE_TEXTS
from opslib.infra.model_artifacts import MANIFEST, ModelArtifactError
from opslib.infra.offline import use_offline_environment

_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


class ModelIntakeRefused(ModelArtifactError, Invalid):
    """The delivered artifact is not a usable model; nothing was registered."""


@dataclass(frozen=True)
class ModelInspection:
    embedding_dimension: int
    max_seq_length: int | None
    modules: list[str]  # the module types, in order
    smoke_texts: list[str]

    def as_record(self) -> dict[str, Any]:
        return {
            "embedding_dimension": self.embedding_dimension,
            "max_seq_length": self.max_seq_length,
            "modules": self.modules,
            "smoke_texts": self.smoke_texts,
            "loaded_offline": True,
        }


def stage_model(source: str, into: Path) -> Path:
    """Copy the folder at ``source`` (a path or an fsspec URL) into ``into``; returns ``into``."""
    if not isinstance(source, str) or not source.strip():
        raise ModelIntakeRefused("source: a sentence-transformers folder or an fsspec URL of one is required")
    try:
        fs, root = fsspec.core.url_to_fs(source.strip())
        if not fs.isdir(root):
            raise ModelIntakeRefused(f"source {source!r}: not a folder")
        listed = [p for p in fs.find(root) if not fs.isdir(p)]
    except ModelIntakeRefused:
        raise
    except Exception as exc:  # fsspec raises whatever its backend raises (missing protocol, auth, ...)
        raise ModelIntakeRefused(f"source {source!r}: cannot be read: {type(exc).__name__}: {exc}") from None
    prefix = root.rstrip("/") + "/"
    into.mkdir(parents=True, exist_ok=True)
    for path in listed:
        relative = path[len(prefix) :] if path.startswith(prefix) else Path(path).name
        parts = relative.split("/")
        if any(p.startswith(".") for p in parts) or relative == MANIFEST:
            continue  # VCS leftovers; another workspace's manifest (this one writes its own)
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(path, str(target))
        except Exception as exc:
            raise ModelIntakeRefused(f"source {source!r}: {relative} cannot be read: {exc}") from None
    return into


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelIntakeRefused(f"source: {what} is not readable JSON ({exc})") from None


def _check_self_contained(folder: Path, source: str) -> list[str]:
    """The module types of the folder's ``modules.json``; refused if it is not a model or a part
    would have to be downloaded."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise ModelIntakeRefused(f"source {source!r}: not a sentence-transformers folder (no modules.json)")
    modules = _read_json(modules_file, "modules.json")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise ModelIntakeRefused(f"source {source!r}: modules.json lists no modules")
    types = []
    for module in modules:
        kind, path = str(module.get("type", "")), str(module.get("path", ""))
        types.append(kind)
        where = (folder / path).resolve()
        transformer = kind.rsplit(".", 1)[-1] == "Transformer"  # its class path moved between versions
        # A module without files of its own (Normalize) may have no folder; one with files must
        # have them here — else sentence-transformers would look for them on the Hub.
        if not where.is_relative_to(folder.resolve()) or (transformer and not where.is_dir()):
            raise ModelIntakeRefused(
                f"source {source!r}: needs a download — module {module.get('idx', '?')} ({kind}) is at "
                f"{path!r}, which is not a folder of the delivered model"
            )
        if transformer:
            config = where / "config.json"
            if not config.is_file():
                raise ModelIntakeRefused(
                    f"source {source!r}: needs a download — its transformer ({path or '.'}) has no config.json"
                )
            if _read_json(config, f"{path or '.'}/config.json").get("auto_map"):
                raise ModelIntakeRefused(
                    f"source {source!r}: needs a download — its transformer's config names custom code "
                    "(auto_map), which is never fetched or run"
                )
            if not any(p.suffix in _WEIGHTS for p in where.iterdir() if p.is_file()):
                raise ModelIntakeRefused(
                    f"source {source!r}: needs a download — its transformer ({path or '.'}) has no weight files"
                )
    return types


def inspect_model(folder: Path, source: str, device: str = "cpu") -> ModelInspection:
    """Load ``folder`` offline and smoke-encode; what it measured, or ``ModelIntakeRefused``."""
    types = _check_self_contained(folder, source)
    use_offline_environment()
    from sentence_transformers import SentenceTransformer  # deferred: loads torch (seconds)

    try:
        # local_files_only as well as the offline switches: a process that imported transformers
        # before the switches were set still may not fetch anything.
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    except Exception as exc:
        raise ModelIntakeRefused(
            f"source {source!r}: does not load offline from the delivered files: {type(exc).__name__}: {str(exc)[:500]}"
        ) from None
    stated = model.get_embedding_dimension()
    try:
        vectors = np.asarray(model.encode(SMOKE_TEXTS, convert_to_numpy=True), dtype=np.float64)
    except Exception as exc:
        raise ModelIntakeRefused(
            f"source {source!r}: fails its smoke encode: {type(exc).__name__}: {str(exc)[:500]}"
        ) from None
    problem = None
    if vectors.ndim != 2 or vectors.shape[0] != len(SMOKE_TEXTS):
        problem = f"expected {len(SMOKE_TEXTS)} vectors, got an array of shape {vectors.shape}"
    elif stated is not None and vectors.shape[1] != stated:
        problem = f"vectors have {vectors.shape[1]} dimensions, the model states {stated}"
    elif not np.isfinite(vectors).all():
        problem = "the vectors are not finite (NaN or infinity)"
    elif (np.linalg.norm(vectors, axis=1) == 0).any():
        problem = "a vector is all zeros (cosine similarity is undefined)"
    if problem:
        raise ModelIntakeRefused(f"source {source!r}: fails its smoke encode: {problem}")
    length = model.max_seq_length
    return ModelInspection(int(vectors.shape[1]), int(length) if length else None, types, list(SMOKE_TEXTS))


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
