"""The one typed settings object.

Values come from (highest first) explicit keyword arguments, ``OPS_*`` environment variables,
an optional TOML config file (``OPS_CONFIG_FILE``), then the defaults below. Nothing else in the
package reads environment variables: code receives a ``Settings`` and child processes (notebook
kernels) receive ``Settings.as_env()``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

OperatorRole = Literal["viewer", "operator", "admin"]
ServeScope = Literal["search", "feedback", "embeddings"]


class ServeToken(BaseModel):
    """A bearer token the HTTP endpoint accepts: only its SHA-256 is configured, never the token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[ServeScope] = Field(min_length=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPS_", extra="forbid", validate_default=True)

    config_file: Path | None = Field(default=None, description="Optional TOML file with any of these settings.")
    workspace: Path = Field(default=Path("workspace"), description="Folder holding the embedded-default stores.")
    db_url: str | None = Field(default=None, description="Metadata DB URL; default sqlite:///<workspace>/metadata.db")
    object_store_url: str | None = Field(
        default=None, description="fsspec URL of Object Storage; default <workspace>/objects"
    )
    model_store_url: str | None = Field(
        default=None, description="fsspec URL of Model Artifact Files; default <workspace>/models"
    )
    chroma_path: Path | None = Field(
        default=None, description="Chroma PersistentClient folder; default <workspace>/chroma"
    )
    chroma_host: str | None = Field(default=None, description="Chroma server host; when set, HttpClient is used")
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    runs_dir: Path = Field(default=Path("runs"), description="Archive of executed stage notebooks (.ipynb + .html).")
    lab_runs_url: str | None = Field(
        default=None,
        description="URL path (from the server's root, e.g. /ops/runs/) where the Jupyter server this kernel "
        "runs under serves runs_dir; set for its kernels by the opslib server extension (opslib.ops.lab_runs), "
        "so the dashboard links reports there rather than as files",
    )
    notebooks_dir: Path | None = Field(
        default=None,
        description="Stage notebooks; default: the ones shipped in the package (opslib.notebooks, i.e. the "
        "repository's notebooks/ folder)",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Local copies of models read from a remote model store; default <workspace>/model-cache",
    )
    base_model_path: Path | None = Field(
        default=None,
        description="Sentence-transformers folder registered at bootstrap; default: packaged all-MiniLM-L6-v2",
    )
    base_model_version: str = Field(default="all-minilm-l6-v2-base")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="where models run: auto = cuda, else mps, else cpu"
    )
    encode_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="precision recorded for a model version when it is registered (its indexes and queries use "
        "it): auto = bf16/fp16 on an accelerator or a CPU with native bf16 that passes a start-up check, else fp32",
    )
    operator: str = Field(default="local-operator", min_length=1)
    operator_role: OperatorRole = "viewer"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: Path | None = Field(
        default=None,
        description="append JSON log lines to this file instead of stderr; a command "
        "still shows warnings and errors on stderr (the runner sets it for a "
        "stage's kernel: <archive stem>.log; `opsbench demo` defaults it to "
        "<workspace>/logs/demo.log)",
    )
    queue_visibility_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a claimed message reappears after this long unless its consumer extends the claim "
        "(a working consumer extends it every heartbeat_interval_s)",
    )
    queue_max_deliveries: dict[str, int] = Field(
        default={"TRAINING_REQUEST": 5, "ROLLBACK_REQUEST": 5, "*": 3},
        description="deliveries without an ack after which a message is parked as poison, per message type "
        "('*': any other type)",
    )
    lease_stale_after_s: float = Field(
        default=45.0,
        gt=0,
        description="a lease (e.g. on the release stages) whose holder has not beaten this long may be taken over",
    )
    feedback_window_days: int = Field(default=7, ge=1)
    snapshot_ttl_days: int = Field(default=14, ge=1)
    feedback_batch_size: int = Field(default=500, ge=1)
    feedback_flush_age_s: float = Field(
        default=5.0, gt=0, description="the HTTP endpoint writes acknowledged feedback to raw_logs/ at least this often"
    )
    feedback_epoch: datetime = Field(
        default=datetime(2020, 1, 1, tzinfo=UTC),
        description="feedback intake refuses (to error_logs/) events whose created_at is before this instant "
        "(ISO-8601 with a UTC offset; the system's epoch)",
    )
    feedback_max_future_s: float = Field(
        default=86400.0,
        ge=0,
        description="feedback intake refuses (to error_logs/) events whose created_at is more than this many "
        "seconds after the time they arrive (clock skew allowed for)",
    )
    kernel_name: str = "python3"
    stage_timeout_s: int = Field(default=3600, ge=1)
    # ML Lifecycle Worker
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    run_stall_after_s: float = Field(default=900.0, gt=0, description="RUNNING without a heartbeat this long = stalled")
    # The bounds match the stage schemas (opslib.execution.registry): a setting the stage would refuse is
    # refused here, when the worker starts, not when a run is already under way.
    evaluation_dataset_ref: str | None = Field(
        default=None,
        pattern=r"^eval-[0-9a-f]{16}$",
        description="evaluation set the worker uses; default: the newest registered one",
    )
    training_epochs: int = Field(
        default=3, ge=1, le=50, description="the most epochs per configuration; each keeps its best (validation)"
    )
    training_batch_size: int = Field(default=16, ge=2, le=1024)
    training_learning_rates: list[Annotated[float, Field(gt=0, le=1e-2)]] = Field(
        default=[2e-5, 5e-5], min_length=1, max_length=8, description="the grid's learning rates (JSON list)"
    )
    training_losses: list[Literal["mnrl", "cached_mnrl", "gist"]] = Field(
        default=["mnrl"], min_length=1, max_length=3, description="the grid's losses (JSON list)"
    )
    training_max_seq_length: int = Field(default=128, ge=8, le=512)
    training_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    training_base_model_version: str | None = Field(
        default=None,
        description="the registered model version every fine-tune starts from; default: the model serving when "
        "the run starts (the run's baseline), e.g. a delivered model once it serves. Stage 40 still judges "
        "the candidate against the serving model",
    )
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    release_primary_metric: Literal["recall_at_5", "mrr_at_5", "ndcg_at_5"] = Field(
        default="ndcg_at_5", description="the metric whose CI decides whether a PASS releases on its own"
    )
    guard_max_drop: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="a candidate whose primary metric drops by more than this on the guard set fails (forgetting)",
    )
    guard_builtin: bool = Field(
        default=True, description="with no guard set registered, register the built-in corpus's as one"
    )
    release_min_effect: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="a PASS releases on its own only when the primary metric's 95 % CI lower bound is above this",
    )
    # Release
    auto_cutover: bool = Field(
        default=True,
        description="after a PASS the worker reindexes and cuts over by itself; "
        "False: it waits for an operator's promote",
    )
    reindex_shard_size: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="chunks per shard of a candidate index build; any live worker may claim a shard",
    )
    reindex_batch_size: int = Field(
        default=256, ge=1, description="chunks per reindex batch (one encode call, one entry transaction)"
    )
    # Schedules (opslib.execution.schedule, `opsbench schedule`): 5-field cron expressions in schedule_timezone
    schedule_timezone: str = Field(
        default="Asia/Seoul", description="IANA time zone the schedules' cron expressions are read in"
    )
    dataset_schedule: str = Field(default="0 3 * * *", description="cron: when 20_build_dataset runs (daily 03:00)")
    dataset_source_window_days: int = Field(default=30, ge=1, le=365, description="source window of scheduled datasets")
    training_schedule: str = Field(
        default="0 4 * * 1", description="cron: when a TRAINING_REQUEST is queued (Monday 04:00)"
    )
    # Serving endpoint (`opsbench serve`, docs/serving.md)
    serve_tokens: list[ServeToken] = Field(
        default=[],
        description='bearer tokens for /v1/* (JSON list of {"name", "sha256", "scopes"}); `opsbench serve-token` '
        "makes one",
    )
    endpoint_heartbeat_s: float = Field(default=2.0, gt=0, description="how often a serving endpoint reports itself")
    endpoint_stale_after_s: float = Field(
        default=15.0, gt=0, description="an endpoint silent this long is not live (the cutover stops waiting for it)"
    )
    endpoint_wait_s: float = Field(
        default=60.0, ge=0, description="how long a cutover or rollback waits for live endpoints to load its model"
    )
    serve_follow_interval_s: float = Field(
        default=0.5, gt=0, description="how often an endpoint reads the release row to preload what comes next"
    )
    serve_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="worker processes serving one address (`opsbench serve --processes`), each a replica: one per core",
    )
    serve_encode_workers: int = Field(default=2, ge=1, le=64, description="threads encoding queries per endpoint")
    serve_batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="how long a query encode waits for others to share its batch"
    )
    serve_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get 413")
    # Alerts (`opsbench status --check`, the dashboard's problem list; opslib.ops.alerts, docs/operator-guide.md)
    alert_incident_window_h: float = Field(
        default=72.0,
        gt=0,
        description="a past incident (a failed run or schedule tick, an ABANDONED stage execution, a parked "
        "message, a dataset marked unusable) alerts for this many hours after it happened, unless something "
        "later clears it sooner (default: over a weekend)",
    )
    alert_schedule_grace_s: float = Field(
        default=3600.0,
        gt=0,
        description="a schedule whose due tick has not been claimed this many seconds after it was due is overdue",
    )
    alert_dataset_lag_h: float = Field(
        default=30.0,
        gt=0,
        description="the newest eligible dataset's source window ending longer ago than this alerts "
        "(datasets are built daily)",
    )
    alert_endpoints_expected: int = Field(
        default=0,
        ge=0,
        description="fewer live and ready serving endpoints than this alerts (0: endpoints are optional)",
    )
    alert_endpoint_stale_h: float = Field(
        default=24.0,
        gt=0,
        description="an endpoint that stopped heartbeating without a clean stop alerts for this many hours after "
        "its last heartbeat; after that it counts as removed",
    )
    fault_point: str | None = Field(default=None, description="test only: SIGKILL the process at this checkpoint")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings, env_settings)
        if config_file is not None:
            if not config_file.is_file():
                raise ValueError(f"config_file: {config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("workspace", "runs_dir", "chroma_path", "notebooks_dir", "model_cache_dir", "log_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("lab_runs_url")
    @classmethod
    def _url_path(cls, value: str | None) -> str | None:
        # A path the browser resolves against the Lab page's own origin: a full URL or a relative
        # path would point the operator somewhere else.
        if value is not None and not (value.startswith("/") and value.endswith("/") and "//" not in value):
            raise ValueError(f"{value!r} is not a URL path that starts and ends with / (e.g. /ops/runs/)")
        return value

    @field_validator("feedback_epoch")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset (e.g. 2020-01-01T00:00:00Z)")
        return value.astimezone(UTC)

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Seoul, UTC)") from None
        return value

    @field_validator("training_base_model_version")
    @classmethod
    def _model_version(cls, value: str | None) -> str | None:
        # The rule of opslib.infra.model_artifacts.validate_model_version (this module sits below it).
        if value is not None and not re.match(r"^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){1,54}[a-z0-9]$", value):
            raise ValueError(
                f"{value!r} is not a model version name (3-56 characters of a-z, 0-9, '.', '_', '-', "
                "starting and ending with a letter or digit)"
            )
        return value

    @field_validator("dataset_schedule", "training_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value.split(" ")) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week)")
        try:
            croniter(value).get_next()
        except Exception:  # e.g. "0 0 30 2 *": valid syntax, but the date never comes
            raise ValueError(f"{value!r} never fires") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.run_stall_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("run_stall_after_s must exceed two heartbeat intervals, or live runs look stalled")
        if self.queue_visibility_timeout_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("queue_visibility_timeout_s must exceed two heartbeat intervals, or held claims lapse")
        if self.lease_stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("lease_stale_after_s must exceed two heartbeat intervals, or live leases look stale")
        if not self.queue_max_deliveries or min(self.queue_max_deliveries.values()) < 1:
            raise ValueError("queue_max_deliveries: every cap must be >= 1 (and '*' should be set)")
        if self.endpoint_stale_after_s <= 2 * self.endpoint_heartbeat_s:
            raise ValueError("endpoint_stale_after_s must exceed two endpoint heartbeats, or live endpoints look gone")
        if self.snapshot_ttl_days < self.feedback_window_days:
            raise ValueError("snapshot_ttl_days must be >= feedback_window_days: feedback must find its snapshot")
        return self

    # Resolved locations -------------------------------------------------------------------
    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.workspace / 'metadata.db'}"

    @property
    def resolved_object_store_url(self) -> str:
        return self.object_store_url or str(self.workspace / "objects")

    @property
    def resolved_model_store_url(self) -> str:
        return self.model_store_url or str(self.workspace / "models")

    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or self.workspace / "chroma"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.workspace / "model-cache"

    @property
    def resolved_notebooks_dir(self) -> Path:
        if self.notebooks_dir is not None:
            return self.notebooks_dir
        # The package's copy: the wheel carries them; an editable install maps the repository's
        # top-level notebooks/ folder (pyproject.toml [tool.setuptools.package-dir]).
        folder = files("opslib.notebooks")
        if not isinstance(folder, Path):  # e.g. imported from a zip: Papermill needs files on disk
            raise RuntimeError(f"the packaged notebooks are not a folder on disk ({folder}): set OPS_NOTEBOOKS_DIR")
        return folder

    def as_env(self) -> dict[str, str]:
        """Environment for a child process (a notebook kernel) so it sees these exact settings."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"config_file"}).items():
            if value is not None:
                # Lists and dicts as JSON: how the environment source parses complex fields.
                env[f"OPS_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
        return env


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value: Any = source().get("config_file")
        if value:
            return Path(value)
    return None


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
