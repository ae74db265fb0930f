"""The Ray Serve app's builder, without a running Ray: what it refuses, the resources and autoscaling it asks for,
what travels to the replicas (no secrets, no driver paths), and how many bytes a predict hands a replica."""

from __future__ import annotations

import pytest

from server.ray_app import build_app, predictor_options, replica_args, replica_payload
from server.settings import Settings
from vpetl.errors import InvalidRequest

REDIS = "redis://127.0.0.1:6399/0"


def test_build_app_refuses_secrets_unknown_keys_and_an_open_public_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VPETL_ADMIN_TOKEN", raising=False)
    with pytest.raises(InvalidRequest, match="admin_token must not be in the app's args"):
        build_app({"redis_url": REDIS, "admin_token": "s3cret"})
    with pytest.raises(InvalidRequest, match="unknown setting.*max_batchsize"):
        build_app({"redis_url": REDIS, "max_batchsize": 8})  # a typo is not silently dropped
    with pytest.raises(InvalidRequest, match="refusing to bind 0.0.0.0 without an admin token"):
        build_app({"redis_url": REDIS, "host": "0.0.0.0"})
    monkeypatch.delenv("VPETL_REDIS_URL", raising=False)
    with pytest.raises(InvalidRequest, match="shared Redis"):
        build_app({})


def test_build_app_with_a_token_in_the_environment_binds_publicly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPETL_ADMIN_TOKEN", "from-the-env")
    app = build_app({"redis_url": REDIS, "host": "0.0.0.0", "max_replicas": 3, "predictor_num_gpus": 0.5})
    predictor = app._bound_deployment.init_args[0]._bound_deployment  # ingress(predictor)
    config = predictor._deployment_config
    assert config.autoscaling_config.max_replicas == 3 and config.autoscaling_config.min_replicas == 1
    assert predictor.ray_actor_options["num_gpus"] == 0.5
    payload = app._bound_deployment.init_args[0]._bound_deployment.init_args[0]
    assert "admin_token" not in payload and "from-the-env" not in repr(payload)


def test_predictor_options_fixed_and_autoscaled() -> None:
    fixed = predictor_options(Settings(replicas=3, predictor_num_cpus=2, predictor_num_gpus=0.25, max_batch_size=8))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert fixed["max_ongoing_requests"] >= 4 * 8  # well above the batch size (ENVIRONMENT.md)
    auto = predictor_options(Settings(replicas=1, min_replicas=0, max_replicas=4, target_ongoing_requests=6,
                                      upscale_delay_s=2, downscale_delay_s=30))  # fmt: skip
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 0, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6.0,
        "upscale_delay_s": 2.0, "downscale_delay_s": 30.0,
    }  # fmt: skip


def test_replicas_get_explicit_settings_only_without_secrets_or_driver_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("VPETL_DEVICE", "cuda")  # the driver's environment must not freeze a replica's device
    args = {"redis_url": REDIS, "checkpoint": str(tmp_path / "w.safetensors"), "cache_mb": 64}
    settings = Settings(**args, admin_token="t0ken")
    payload = replica_payload(settings, set(args))
    assert payload == {"redis_url": REDIS, "cache_mb": 64.0}
    assert "admin_token" not in replica_args(settings) and replica_args(settings)["cache_mb"] == 64.0
    monkeypatch.setenv("VPETL_DEVICE", "cpu")
    assert Settings(**payload).device == "cpu"  # each replica reads its own environment


def test_a_predict_hands_the_replica_the_encoded_clip_plus_under_1_kb() -> None:
    """What crosses processes per request: the handle call's arguments, pickled with Ray's cloudpickle (as the
    ingress ships them), are the clip's own bytes plus under 1 KB — never a decoded float32 tensor."""
    from ray.cloudpickle import dumps

    clip = bytes(range(256)) * 400  # 100 KB stands in for an encoded mp4
    args = (clip, "some-task-name", 12, 5)  # RemotePredictor.predict_encoded -> PredictorDeployment.predict
    overhead = len(dumps(args)) - len(clip)
    assert 0 < overhead <= 1024, overhead


def test_ingress_lists_live_replicas_and_forgets_long_gone_ones(redis_url: str) -> None:
    """Replica heartbeats in Redis: fresh ones are listed, stale ones hidden, ones gone a minute deleted."""
    import asyncio
    import json
    import time

    from server.ray_app import REPLICA_STATS_KEY, RemotePredictor
    from vpetl.store import AsyncAdapterStore

    async def main() -> tuple[list[str], set[bytes]]:
        store = AsyncAdapterStore(redis_url)
        now = time.time()
        beats = {"fresh": now - 1, "stale": now - 10, "gone": now - 120}
        await store.redis.hset(REPLICA_STATS_KEY, mapping={
            rid: json.dumps({"replica": rid, "ts": ts}) for rid, ts in beats.items()
        })  # fmt: skip
        ingress = RemotePredictor(store, affinity=False, pointer_check_s=1.0)
        listed = [r["replica"] for r in await ingress.replica_stats()]
        left = set(await store.redis.hkeys(REPLICA_STATS_KEY))
        await store.aclose()
        return listed, left

    listed, left = asyncio.run(main())
    assert listed == ["fresh"]
    assert left == {b"fresh", b"stale"}
