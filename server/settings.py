"""Process settings for the server and worker (pydantic-settings; env prefix ``VPETL_``), created by
``get_settings()`` at start-up — never at import — and passed explicitly."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vpetl.errors import InvalidRequest

if TYPE_CHECKING:
    from vpetl.petl.data_path import DataPath


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VPETL_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, description="bind port")
    engine: Literal["local", "ray"] = "local"
    redis_url: str | None = Field(None, description="Redis URL; unset = embedded redis-server under data_dir")
    data_dir: Path = Field(Path(".vpetl"), description="embedded Redis, clip store, backbone cache")
    clip_store: str | None = Field(
        None,
        description="where uploaded clip bytes live: a local path or fsspec URL (s3://bucket/prefix, gs://…) that "
        "every API and worker process shares; unset = data_dir/clips. S3 endpoint and credentials: the standard "
        "AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables (or ~/.aws, an instance role)",
    )
    admin_token: str | None = Field(None, description="bootstrap admin token (every scope, every task)")
    # API keys (vpetl keys create): once an admin token or any key exists, every route but the health probes needs one
    metrics_public: bool = Field(False, description="serve /metrics without a key (for a Prometheus scraper)")
    key_check_s: float = Field(0.5, gt=0, description="periodic API key re-check (covers missed revocation events)")
    audit_max_len: int = Field(100_000, ge=100, description="audit stream length bound (XADD MAXLEN ~)")
    backbone: str = "vpetl-demo"
    checkpoint: Path | None = None
    device: str = "cpu"
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="serving dtype of the backbone and adapters (logits and softmax stay fp32)"
    )
    max_batch_size: int = Field(8, ge=1)
    # The device data path (vpetl/petl/data_path.py); pinned/stream/tf32 only act on CUDA.
    pinned_memory: bool = Field(True, description="CUDA: stack batches into pinned host buffers, copy non-blocking")
    cuda_stream: bool = Field(True, description="CUDA: run forwards on the predictor's own stream")
    tf32: bool = Field(True, description="CUDA: allow TF32 tensor cores for fp32 matmuls")
    batch_buckets: str = Field(
        "", description="pad batches to these sizes, e.g. 1,8,32 (fixed shapes for torch.compile); empty: no padding"
    )
    compile: bool = Field(False, description="torch.compile the backbone forward (measure first: benchmarks/gpu.py)")
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1)
    batch_policy: Literal["mixed", "per-task"] = Field(
        "mixed", description="mixed: one forward per batch across tasks; per-task: split by task (baseline)"
    )
    max_upload_mb: float = Field(64.0, gt=0, description="clip upload limit")
    max_adapter_mb: float = Field(64.0, gt=0, description="adapter upload limit")
    cache_mb: float = Field(256.0, gt=0, description="adapter cache byte budget per predictor")
    pointer_check_s: float = Field(0.5, gt=0, description="periodic pointer re-check (covers missed events)")
    keep_versions: int = Field(10, ge=0, description="adapter versions kept per task (newest; 0 keeps all)")
    backbone_wait_s: float = Field(
        60.0, ge=0, description="how long a process without weights of its own waits for a backbone registration"
    )
    # Ray Serve (engine ray, `serve deploy`, KubeRay): resources and autoscaling per deployment.
    replicas: int = Field(1, ge=1, description="predictor replicas (the initial count when autoscaling)")
    predictor_num_cpus: float = Field(1.0, ge=0, description="CPUs each predictor replica reserves")
    predictor_num_gpus: float = Field(0.0, ge=0, description="GPUs each predictor replica reserves (fractions ok)")
    min_replicas: int | None = Field(None, ge=0, description="autoscaling: fewest predictor replicas")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling on when set: most predictor replicas")
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling: requests in flight per replica")
    upscale_delay_s: float = Field(10.0, ge=0, description="autoscaling: sustained load before adding a replica")
    downscale_delay_s: float = Field(60.0, ge=0, description="autoscaling: idle time before removing a replica")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (no backbone; auth, limits)")
    ingress_num_cpus: float = Field(0.25, ge=0, description="CPUs each ingress replica reserves")
    # Off by default: Ray's multiplexed routing keeps sending a task to the replicas that already hold it, so a hot
    # task never spreads onto replicas added by autoscaling (tests/e2e/test_ray_cluster.py saw the new replica idle
    # for 60 s under load). Each replica's own byte-budget cache keeps the popular adapters resident either way.
    ray_affinity: bool = Field(False, description="route a task to a replica that already holds its adapter")
    torch_threads: int = Field(2, ge=1)
    # Hardening of POST /predict: what one request may cost before any work is done for it.
    max_predict_mb: float = Field(16.0, gt=0, description="POST /predict body limit (training uploads: max_upload_mb)")
    predict_max_frame_pixels: int = Field(1920 * 1080, ge=1, description="/predict: pixels of one frame")
    predict_max_frames: int = Field(18_000, ge=1, description="/predict: frames in the clip")
    predict_max_duration_s: float = Field(600.0, gt=0, description="/predict: seconds of video")
    decode_workers: int = Field(
        2, ge=0, description="decoder processes per predictor (0 = decode in a thread of the server process)"
    )
    decode_timeout_s: float = Field(10.0, gt=0, description="one decode's limit; the worker is killed past it")
    decode_memory_mb: float = Field(2048.0, gt=0, description="address-space cap of each decoder process")
    request_deadline_s: float = Field(30.0, gt=0, description="POST /predict deadline (504 deadline_exceeded)")
    max_inflight: int | None = Field(
        None, ge=1, description="/predict requests admitted at once (default max_queue + max_batch_size); "
        "beyond it 503 overloaded before the body is read"
    )
    limit_concurrency: int = Field(512, ge=1, description="uvicorn: connections + tasks before a bare 503")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_adapter_bytes(self) -> int:
        return int(self.max_adapter_mb * 1024 * 1024)

    @field_validator("batch_buckets")
    @classmethod
    def _buckets_are_sizes(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"batch buckets are comma-separated sizes >= 1 such as 1,8,32, not {value!r}")
        return ",".join(str(n) for n in sorted({int(p) for p in parts}))

    def data_path(self) -> DataPath:
        """The bank's device data path from these settings."""
        from vpetl.petl.data_path import DataPath, parse_buckets

        return DataPath(pinned=self.pinned_memory, stream=self.cuda_stream, tf32=self.tf32,
                        buckets=parse_buckets(self.batch_buckets), compile=self.compile)  # fmt: skip

    def check_bind(self) -> None:
        """Refuse to serve a non-loopback address without an admin token (write routes would be open)."""
        if self.admin_token:
            return
        if not is_loopback(self.host):
            raise InvalidRequest(
                f"refusing to bind {self.host} without an admin token: set VPETL_ADMIN_TOKEN (or bind 127.0.0.1)"
            )


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
