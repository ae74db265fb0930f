"""The worker's training device is checked before it claims any job: one this machine lacks is refused clearly."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from server.cli import app
from training.worker import check_device
from vpetl.errors import InvalidRequest


def test_check_device() -> None:
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(InvalidRequest, match="invalid training device 'gpu-please'"):
        check_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequest, match="no usable CUDA GPU"):
            check_device("cuda")
    with pytest.raises(InvalidRequest, match="GPU"):
        check_device(f"cuda:{torch.cuda.device_count() + 7}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine cuda is there: nothing to refuse")
def test_vpetl_worker_refuses_a_missing_gpu_before_touching_redis() -> None:
    # port 9 refuses connections: the refusal must come first, from the device check, not from Redis
    result = CliRunner().invoke(app, ["worker", "--redis-url", "redis://127.0.0.1:9/0", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no usable CUDA GPU" in result.stderr and "redis" not in result.stderr.lower()
