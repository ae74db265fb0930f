"""The OpenAPI schema states the constraints the server enforces: the task-name pattern agrees with
``is_valid_task_name`` (the one rule), and every task path/query parameter carries it."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

from server.app import build_app
from server.deps import TASK_PATTERN
from server.metrics import Metrics
from server.settings import Settings
from vpetl.protocol import is_valid_task_name
from vpetl.store import async_redis_client


def test_the_schema_pattern_is_the_task_name_rule() -> None:
    rng = random.Random(0)
    pattern = re.compile(TASK_PATTERN)
    samples = ["a", "a.", "a..b", "a.b.c", ".a", "-a", "a" * 64, "a" * 65, "A", "a/b", "a_b-c.d", "0..", "a.-"]
    samples += ["".join(rng.choice("ab.-_Z/") for _ in range(rng.randint(1, 70))) for _ in range(20000)]
    for name in samples:
        schema_says = bool(pattern.fullmatch(name)) and len(name) <= 64
        assert schema_says == is_valid_task_name(name), name


def test_every_task_parameter_carries_the_pattern() -> None:
    # the key store is never reached: only the schema is read (a client to nowhere, never connected)
    store = SimpleNamespace(redis=async_redis_client("redis://127.0.0.1:1/0"))
    app = build_app(SimpleNamespace(settings=Settings(), metrics=Metrics(), store=store))  # type: ignore[arg-type]
    seen = 0
    for path, item in app.openapi()["paths"].items():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["name"] in ("task", "cursor"):
                    assert param["schema"].get("pattern") == TASK_PATTERN, (path, param)
                    assert param["schema"].get("maxLength") == 64
                    seen += 1
    assert seen >= 8
