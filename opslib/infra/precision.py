"""Which device and numeric precision a model runs at on this machine.

``OPS_DEVICE`` (``auto`` | ``cpu`` | ``cuda`` | ``mps``) and ``OPS_ENCODE_PRECISION`` (``auto`` |
``fp32`` | ``bf16`` | ``fp16``). ``auto`` takes the accelerator when there is one; on a CPU it takes
bfloat16 only where the CPU computes it natively (AVX-512 BF16 / AMX on x86, the BF16 extension on
Arm — read from the CPU's flags, never guessed) *and* a start-up check passes: the model encodes
``CHECK_TEXTS`` at both precisions and every text's cosine to its fp32 vector must be at least
``MIN_COSINE``. Otherwise fp32.

A precision is chosen once per model version, when it is registered, and recorded with it (the
Metadata DB row, the manifest, every index entry): an index is always searched at the precision it
was built with.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from opslib.errors import Invalid, OpsError
from opslib.infra.offline import use_offline_environment

if TYPE_CHECKING:
    import numpy as np
    import torch

DeviceSetting = Literal["auto", "cpu", "cuda", "mps"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Measured for all-MiniLM-L6-v2 on faq-dev passages: bf16 ≥ 0.998 per passage, fp16 ≥ 0.9999.
# 0.995 leaves room for other models of that kind while catching a model that bf16 breaks
# (its vectors would rank differently; see docs/benchmarks.md for recall at each precision).
MIN_COSINE = 0.995
CHECK_TEXTS = (
    "How do I reset my password if I no longer have access to the recovery email?",
    "The scheduler retries a failed job three times with exponential backoff before alerting.",
    "결제 내역은 설정 메뉴의 청구 탭에서 확인할 수 있습니다.",
    "error 0x80070005: access denied while installing the update",
    "Q4 revenue grew 12% year over year, driven by subscriptions in APAC.",
    "short",
    "A very long passage repeats itself to exercise deep attention over many tokens. " * 8,
)
# Native bfloat16 arithmetic, by the flag the kernel reports in /proc/cpuinfo.
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


class PrecisionError(OpsError):
    pass


class PrecisionInvalid(PrecisionError, Invalid):
    """A device or precision that this machine cannot provide."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model version will be encoded at, and why."""

    precision: Precision
    device: str
    reason: str
    min_cosine: float | None = None  # the start-up check's result, when one ran

    def as_record(self) -> dict[str, object]:
        return {
            "encode_precision": self.precision,
            "device": self.device,
            "reason": self.reason,
            "check_min_cosine": self.min_cosine,
            "check_bound": MIN_COSINE,
        }


def validate_precision(precision: str) -> Precision:
    """``precision`` as a ``Precision``, or ``PrecisionInvalid`` naming it."""
    for known in PRECISIONS:
        if precision == known:
            return known
    raise PrecisionInvalid(f"precision {precision!r}: must be one of {list(PRECISIONS)}")


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch  # deferred: seconds to import

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; macOS sysctl); empty when unknown."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
        return frozenset(flags)
    if platform.system() == "Darwin":
        done = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return frozenset({"bf16"}) if done.stdout.strip() == "1" else frozenset()
    return frozenset()


def cpu_bf16_flag() -> str | None:
    """The flag showing native bfloat16 on this CPU, or None."""
    flags = cpu_flags()
    return next((flag for flag in _BF16_CPU_FLAGS if flag in flags), None)


def resolve_device(setting: DeviceSetting) -> str:
    """``auto`` → cuda, else mps, else cpu; an explicit accelerator must be present."""
    import torch

    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if setting == "auto":
        return next(device for device in ("cuda", "mps", "cpu") if available[device])
    if setting not in available:
        raise PrecisionInvalid(f"device {setting!r}: must be one of {list(get_args(DeviceSetting))}")
    if not available[setting]:
        raise PrecisionInvalid(f"device {setting!r} (OPS_DEVICE): not available on this machine")
    return setting


def _accelerated_precision(device: str) -> tuple[Precision, str]:
    """What ``auto`` tries on ``device`` before the check, and why."""
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU computes bfloat16 natively"
        return "fp16", "the GPU has no native bfloat16; float16 instead"
    if device == "mps":
        return "fp16", "Apple GPUs compute float16 natively"
    flag = cpu_bf16_flag()
    if flag is None:
        return "fp32", "the CPU has no native bfloat16 (no amx_bf16/avx512_bf16/bf16 flag)"
    return "bf16", f"the CPU computes bfloat16 natively ({flag})"


def check_min_cosine(model_path: Path, device: str, precision: Precision) -> float:
    """Smallest cosine, over ``CHECK_TEXTS``, between the model's vectors at ``precision`` and at fp32."""
    import numpy as np

    fp32 = _encode_check_texts(model_path, device, "fp32")
    other = _encode_check_texts(model_path, device, precision)
    return float(np.min(np.sum(fp32 * other, axis=1)))


def _encode_check_texts(model_path: Path, device: str, precision: Precision) -> np.ndarray:
    use_offline_environment()
    from sentence_transformers import SentenceTransformer  # deferred: loads torch

    model = SentenceTransformer(str(model_path), device=device, model_kwargs={"torch_dtype": torch_dtype(precision)})
    vectors: np.ndarray = model.encode(list(CHECK_TEXTS), convert_to_numpy=True, normalize_embeddings=True)
    return vectors


def choose_precision(setting: PrecisionSetting, device: str, model_path: Path) -> PrecisionChoice:
    """The precision to record for the model at ``model_path`` (see the module docstring)."""
    if setting == "fp32":
        return PrecisionChoice("fp32", device, "OPS_ENCODE_PRECISION=fp32")
    if setting != "auto":
        explicit = validate_precision(setting)
        # An operator's explicit choice stands; the check is still run and recorded.
        cosine = check_min_cosine(model_path, device, explicit)
        return PrecisionChoice(explicit, device, f"OPS_ENCODE_PRECISION={explicit}", cosine)
    precision, why = _accelerated_precision(device)
    if precision == "fp32":
        return PrecisionChoice("fp32", device, why)
    cosine = check_min_cosine(model_path, device, precision)
    if cosine < MIN_COSINE:
        return PrecisionChoice(
            "fp32", device, f"{why}, but the start-up check failed (min cosine {cosine:.4f} < {MIN_COSINE})", cosine
        )
    return PrecisionChoice(precision, device, f"{why}; start-up check min cosine {cosine:.4f} ≥ {MIN_COSINE}", cosine)


def training_mixed_precision(setting: PrecisionSetting, device: str) -> Precision:
    """The precision training autocasts to on ``device`` (weights and optimizer state stay fp32):
    the device's native half precision, or ``fp32`` when the operator asked for it or there is no
    native half precision to gain from."""
    if setting == "fp32":
        return "fp32"
    if device == "cuda":
        import torch

        if setting in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    if device == "cpu" and setting in ("auto", "bf16") and cpu_bf16_flag() is not None:
        # Measured on an AMX CPU (docs/benchmarks.md): one epoch 1.99x faster than fp32, the
        # candidate's metrics within 0.1 point. fp16 has no native CPU arithmetic to gain from.
        return "bf16"
    # MPS: the Trainer's mixed precision there is not dependable.
    return "fp32"
