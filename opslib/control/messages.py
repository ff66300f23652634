"""Control messages: ``TRAINING_REQUEST`` and ``ROLLBACK_REQUEST``, payload ``v1``.

A message is parsed strictly at the consumer — the trust boundary of an at-least-once queue that
external producers (schedulers, other services) also write to. An unsupported
``payload_version`` or a missing field is refused with a recorded reason, never executed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from opslib.db.models import utcnow
from opslib.errors import Refused
from opslib.infra.logs import current_trace_id

TRAINING_REQUEST: Final = "TRAINING_REQUEST"
ROLLBACK_REQUEST: Final = "ROLLBACK_REQUEST"
MESSAGE_TYPES = (TRAINING_REQUEST, ROLLBACK_REQUEST)
SUPPORTED_PAYLOAD_VERSIONS = ("v1",)


class MessageRefused(Refused, ValueError):
    """The message cannot be executed; ``reason`` is what gets recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    payload_version: Literal["v1"]
    trace_id: str = Field(min_length=1, max_length=64)
    attempt: int = Field(default=0, ge=0)
    issued_at: datetime

    @field_validator("issued_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return value


class TrainingRequest(_Envelope):
    """Start (or queue) a training run; the consumer picks the latest eligible dataset itself."""

    message_type: Literal["TRAINING_REQUEST"] = TRAINING_REQUEST
    trigger_source: Literal["schedule", "manual"] = "manual"
    requested_by: str | None = None
    reason: str | None = None
    # Optional: a registered model to evaluate and release instead of training one (e.g. the
    # serving weights at another precision). Absent in every message from before it existed.
    candidate_model_version: str | None = Field(default=None, min_length=3, max_length=56)


class RollbackRequest(_Envelope):
    """Roll serving back to the rollback snapshot; refused if the active version moved on."""

    message_type: Literal["ROLLBACK_REQUEST"] = ROLLBACK_REQUEST
    expected_active_model_version: str = Field(min_length=1)
    requested_by: str | None = None
    reason: str | None = None


ControlMessage = Annotated[TrainingRequest | RollbackRequest, Field(discriminator="message_type")]
_adapter: TypeAdapter[TrainingRequest | RollbackRequest] = TypeAdapter(ControlMessage)


def new_training_request(**fields: Any) -> TrainingRequest:
    return TrainingRequest(
        payload_version="v1",
        trace_id=fields.pop("trace_id", None) or current_trace_id(),
        issued_at=fields.pop("issued_at", None) or utcnow(),
        **fields,
    )


def new_rollback_request(expected_active_model_version: str, **fields: Any) -> RollbackRequest:
    return RollbackRequest(
        payload_version="v1",
        trace_id=fields.pop("trace_id", None) or current_trace_id(),
        issued_at=fields.pop("issued_at", None) or utcnow(),
        expected_active_model_version=expected_active_model_version,
        **fields,
    )


def parse_control_message(payload: Any, attempt: int = 0) -> TrainingRequest | RollbackRequest:
    """The typed message, or ``MessageRefused`` naming the field and the reason."""
    if not isinstance(payload, dict):
        raise MessageRefused("payload: not a JSON object")
    message_type = payload.get("message_type")
    if message_type not in MESSAGE_TYPES:
        raise MessageRefused(f"message_type: unsupported {message_type!r} (supported: {', '.join(MESSAGE_TYPES)})")
    version = payload.get("payload_version")
    if version not in SUPPORTED_PAYLOAD_VERSIONS:
        raise MessageRefused(
            f"payload_version: unsupported {version!r} (supported: {', '.join(SUPPORTED_PAYLOAD_VERSIONS)})"
        )
    try:
        return _adapter.validate_python({**payload, "attempt": attempt})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"][1:] or error["loc"]) or "payload"
        kind = {"missing": "missing field", "extra_forbidden": "unknown field"}.get(error["type"], error["msg"])
        raise MessageRefused(f"{field}: {kind}") from None


def to_payload(message: TrainingRequest | RollbackRequest) -> dict[str, Any]:
    """The stored form: the message without ``attempt`` (the queue row counts deliveries)."""
    return message.model_dump(mode="json", exclude={"attempt"})
