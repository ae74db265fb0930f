"""A real ``vpetl serve`` on DualPath's default backbone family (``clip-vit-tiny``, 16-frame clips like
``clip-vit-b16``): the frames it decodes are the frames DualPath's two paths sample from, so ``/predict`` on a real
mp4 gives the model's own scores on that clip; an adapter that needs more frames than the deployment decodes is
refused at upload with a stable code and the store unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.server.conftest import ServerProcess, db_url, error_code, flush, make_adapter, store_snapshot
from vpetl.backbones import create_backbone
from vpetl.petl import create_model, make_config
from vpetl.petl.io import adapter_bytes
from vpetl.protocol import InputSpec
from vpetl.video import load_clip

pytestmark = pytest.mark.integration

BACKBONE = "clip-vit-tiny"
LABELS = ["a", "b", "c"]
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def http(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    url = db_url(redis_server_url, 11)
    flush(url)
    tmp = tmp_path_factory.mktemp("dualpath_serving")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log").start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60.0) as client:
            yield client
    finally:
        proc.stop()
        flush(url)


def _perturbed_dualpath(backbone, seed: int, **options):
    model = create_model(backbone, make_config("dualpath", bottleneck=8, **options), len(LABELS), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_predict_scores_are_the_models_on_the_decoded_clip(http: httpx.Client, clips: dict[str, bytes]) -> None:
    backbone = create_backbone(BACKBONE)
    model = _perturbed_dualpath(backbone, seed=3, temporal_pre_attn=True)
    r = http.put("/adapters/dual", content=adapter_bytes(model, task="dual", labels=LABELS), headers=OCTET)
    assert r.status_code == 201, r.text
    r = http.post("/predict", params={"task": "dual"}, content=clips["ok"], headers={"Content-Type": "video/mp4"})
    assert r.status_code == 200, r.text
    served = {p["label"]: p["score"] for p in r.json()["predictions"]}
    x = torch.from_numpy(load_clip(clips["ok"], backbone.input_spec)).unsqueeze(0)  # (1, 3, 16, 32, 32)
    assert x.shape[2] == 16 == backbone.input_spec.num_frames
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert served == pytest.approx({label: float(p) for label, p in zip(LABELS, probs, strict=True)}, abs=1e-4)


def test_adapter_needing_more_frames_is_refused_and_nothing_stored(http: httpx.Client) -> None:
    spec32 = InputSpec(num_frames=32, sampling="uniform", size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = _perturbed_dualpath(create_backbone(BACKBONE, input_spec=spec32), seed=4, num_framesets=2)
    before = store_snapshot(http)
    r = http.put("/adapters/long", content=adapter_bytes(model, task="long", labels=LABELS), headers=OCTET)
    assert r.status_code in (400, 409, 422), r.text
    assert error_code(r) == "incompatible_adapter" and "needs clips of 32 frames" in r.text
    assert store_snapshot(http) == before
    # the same method at the deployment's 16 frames is accepted (it is the frame count, not the method)
    ok = make_adapter("short", method=make_config("dualpath", bottleneck=8), labels=LABELS, backbone=BACKBONE)
    assert http.put("/adapters/short", content=ok, headers=OCTET).status_code == 201
