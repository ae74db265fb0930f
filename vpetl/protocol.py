"""Schemas shared by the cloud and the edge (torch-free, pydantic only).

``InputSpec`` is the single description of what a backbone eats; the server, the trainer and the edge all
preprocess with it, and it travels in adapter and backbone metadata.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def is_valid_task_name(name: str) -> bool:
    """Task names are used in Redis keys and (checked) paths: ``^[a-z0-9][a-z0-9_.-]{0,63}$``, no ``..``."""
    return bool(TASK_NAME_RE.fullmatch(name)) and ".." not in name


class InputSpec(BaseModel):
    """How a clip becomes a model input: frames, sampling, spatial size, normalisation (0–1 pixel scale)."""

    model_config = ConfigDict(frozen=True)

    num_frames: int = Field(16, ge=1, description="frames per clip fed to the backbone")
    sampling: Literal["dense", "uniform"] = Field("dense", description="dense: fixed stride; uniform: TSN segments")
    sampling_rate: int = Field(4, ge=1, description="frame stride for dense sampling")
    size: int = Field(224, ge=8, description="square crop side after short-side resize")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_short(self) -> int:
        """Short side before the centre crop (the usual 256/224 ratio)."""
        return int(round(self.size * 256 / 224))


# ------------------------------------------------------------------------------------------------ HTTP API schemas
# The bodies of the HTTP API (DESIGN.md, "HTTP API"): the server declares them as response models, the edge SDK
# parses responses with them. Unknown fields are ignored so an older edge keeps working against a newer server.


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code, e.g. unknown_task, too_large")
    message: str = Field(..., description="for humans: what went wrong and what to do")


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class LabelScore(BaseModel):
    label: str
    index: int = Field(..., ge=0, description="class index in the adapter's label order")
    score: float = Field(..., description="softmax probability")


class PredictionTiming(BaseModel):
    """Milliseconds spent per stage of one request."""

    decode: float = Field(..., description="decode + sample + preprocess of the uploaded clip")
    queue: float = Field(..., description="wait in the micro-batcher's queue")
    model: float = Field(..., description="the batch's forward (shared by the batch)")
    total: float = Field(..., description="the whole request as the server saw it (body read included)")


class PredictionResponse(BaseModel):
    """``POST /predict``: the top-k labels under the adapter version that served the request."""

    task: str
    version: int = Field(..., ge=1, description="the adapter version that served this request")
    adapter_sha256: str
    predictions: list[LabelScore]
    timing_ms: PredictionTiming
    replica: str = Field("local", description="the predictor that ran it (a Ray Serve replica id, or 'local')")


class VersionInfo(BaseModel):
    """One published adapter version (``GET /adapters/{task}`` lists them oldest first)."""

    version: int = Field(..., ge=1)
    sha256: str = Field(..., description="sha256 of the artifact bytes; the download's ETag")
    size: int = Field(..., ge=0, description="artifact size in bytes")
    created_at: datetime
    current: bool = Field(False, description="whether requests without ?version= get this version")
    method: str | None = None
    trainable_params: int | None = None
    num_classes: int | None = None
    labels: list[str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    backbone: str | None = None
    backbone_sha256: str | None = None


class AdapterInfo(BaseModel):
    """A task as ``GET /adapters`` lists it: its current version and that version's description."""

    task: str
    version: int = Field(..., ge=1, description="the current version")
    latest_version: int = Field(..., ge=1, description="the highest version published (a rollback can lag it)")
    num_versions: int = Field(..., ge=0)
    sha256: str
    size: int = Field(..., ge=0)
    method: str | None = None
    trainable_params: int | None = None
    num_classes: int | None = None
    labels: list[str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    backbone: str | None = None
    backbone_sha256: str | None = None
    created_at: datetime = Field(..., description="when the task was first published")
    updated_at: datetime = Field(..., description="when its pointer last moved")


class AdapterList(BaseModel):
    """``GET /adapters``: every task, sorted by name."""

    adapters: list[AdapterInfo]


class AdapterDetail(AdapterInfo):
    """``GET /adapters/{task}``: the task with its whole version history (oldest first)."""

    versions: list[VersionInfo]


class AdapterRef(BaseModel):
    """Which version a write produced: ``PUT /adapters/{task}`` (201) and ``POST /adapters/{task}/rollback``."""

    task: str
    version: int = Field(..., ge=1)
    sha256: str


class RollbackRequest(BaseModel):
    """``POST /adapters/{task}/rollback`` body: the existing version to make current."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(..., ge=1)


class AdapterDeleted(BaseModel):
    """``DELETE /adapters/{task}``."""

    task: str
    versions_removed: int = Field(..., ge=0)


class ClipUploaded(BaseModel):
    """``POST /datasets/{task}/clips`` (201): the stored clip; ``duplicate`` when these bytes were already there."""

    task: str
    label: str
    split: Literal["train", "val"]
    sha256: str
    size: int = Field(..., ge=1)
    duplicate: bool = False


class DatasetCounts(BaseModel):
    """``GET /datasets/{task}``: clip counts ``{split: {label: n}}``."""

    task: str
    counts: dict[str, dict[str, int]]
    total: int = Field(..., ge=0)


class BackboneInfo(BaseModel):
    """``GET /backbone``: what the edge must match (the input spec) and what adapters are checked against."""

    name: str
    family: str
    sha256: str = Field(..., description="content hash of the frozen weights; adapters record it")
    input_spec: InputSpec
    num_features: int
    parameters: int = Field(..., description="number of frozen backbone parameters")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, bool]
    replicas: list[dict[str, Any]] = Field(
        default_factory=list, description="each predictor: backbone sha256, queue depth, adapter cache, node"
    )


# ------------------------------------------------------------------------------------------------------ jobs
JobState = Literal["queued", "running", "succeeded", "failed"]


class JobRequest(BaseModel):
    """``POST /jobs``: train an adapter for ``task`` on its uploaded clips (defaults: BAPAT, 10 epochs, batch 8)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(..., description="task whose uploaded clips to train on")
    method: str = Field("bapat", description="PETL method (bapat, patt, adaptmlp, lora, bitfit, linear, …)")
    bottleneck: int | None = Field(None, ge=1, le=4096, description="the method's width (d, r or rank)")
    scale: float | None = Field(None, description="the method's scale s, where it has one")
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=512)
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: from the recipe)")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    seed: int = 0
    publish_if_worse: bool = Field(False, description="publish even if val top-1 is below the current version's")


class JobCreated(BaseModel):
    job_id: str
    state: JobState = "queued"


class JobInfo(BaseModel):
    id: str
    state: JobState
    params: dict[str, object] = Field(default_factory=dict)
    progress: dict[str, object] = Field(default_factory=dict, description="epoch, loss, val top-1, ETA …")
    result: dict[str, object] = Field(default_factory=dict, description="published?, version, metrics, reason")
    error: str | None = None
    version: int | None = Field(None, description="the adapter version the job published")
    worker: str | None = None
    attempts: int = 0
    dead_letter: str | None = Field(
        None, description="entry id in the vpetl:{jobs}:deadletter stream when the job was given up after max attempts"
    )
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    jobs: list[JobInfo]
