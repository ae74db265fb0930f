"""A small in-process HTTP server that speaks the vpetl API contract (DESIGN.md "HTTP API"), for the edge tests
and ``benchmarks/edge.py``: stdlib ``http.server`` on a real loopback port, no torch, no Redis.

It keeps adapters (versions, current pointer, ETag = sha256, 304 on If-None-Match), a backbone graph, datasets and
jobs in memory, counts the body bytes it sends per kind, and can inject faults: queue ``(status, headers, body)``
responses in ``faults`` and the next requests get them (e.g. 503 with Retry-After) before the real handler runs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from vpetl.artifact import convert_adapter, read_adapter_meta


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class FakeState:
    token: str | None = None
    adapters: dict[str, list[bytes]] = field(default_factory=dict)  # task -> versions (index 0 = v1)
    current: dict[str, int] = field(default_factory=dict)
    onnx: dict[str, bytes] = field(default_factory=dict)  # family -> graph bytes ("default" when none asked)
    clips: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"adapter": 0, "onnx": 0, "json": 0})
    received: int = 0
    job_epochs: int = 3
    # When set, adapters for another backbone are refused (409) as the real server refuses them, and clips are
    # checked by decoding their metadata (400 invalid_video): the contract suite (test_contract.py) sets it.
    backbone_sha256: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, task: str, data: bytes) -> int:
        self.adapters.setdefault(task, []).append(data)
        self.current[task] = len(self.adapters[task])
        return self.current[task]


def _info(state: FakeState, task: str) -> dict[str, Any]:
    version = state.current[task]
    data = state.adapters[task][version - 1]
    meta = read_adapter_meta(data)
    return {
        "task": task, "version": version, "latest_version": len(state.adapters[task]),
        "num_versions": len(state.adapters[task]), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "method": meta.method, "trainable_params": meta.trainable_params, "num_classes": meta.num_classes,
        "labels": meta.labels, "metrics": meta.metrics, "backbone": meta.backbone,
        "backbone_sha256": meta.backbone_sha256, "created_at": _now(), "updated_at": _now(),
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # One buffered write per response and no Nagle: otherwise header and body go out as separate small packets
    # and delayed ACKs add ~40 ms to every request, which would swamp the latencies the benchmark reports.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def state(self) -> FakeState:
        return self.server.state

    def _send(self, status: int, body: bytes = b"", *, headers: dict[str, str] | None = None,
              kind: str = "json", content_type: str = "application/json") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status != 304:
            with self.state.lock:  # count before writing: the client may return before this thread resumes
                self.state.sent[kind] += len(body)
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"code": code, "message": message}}, headers)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        with self.state.lock:
            self.state.received += len(data)
        return data

    def _authorized(self) -> bool:
        if self.state.token is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self._error(401, "unauthorized", "this route needs an admin token")
            return False
        if header[len("Bearer "):] != self.state.token:
            self._error(403, "forbidden", "the admin token is not valid")
            return False
        return True

    def _etag_hit(self, sha: str) -> bool:
        tags = [t.strip().removeprefix("W/") for t in self.headers.get("If-None-Match", "").split(",")]
        return f'"{sha}"' in tags

    # --------------------------------------------------------------------------------------------- routes
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.state.lock:
            self.state.requests.append((method, url.path))
            fault = self.state.faults.pop(0) if self.state.faults else None
        if fault is not None:
            self._body()
            status, headers, body = fault
            self._json(status, body, headers)
            return
        route = getattr(self, f"_{method.lower()}_{parts[0] if parts else 'root'}", None)
        if route is None:
            self._body()
            self._error(404, "not_found", f"no route for {method} {url.path}")
            return
        route(parts[1:], query)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _get_healthz(self, parts: list[str], query: dict[str, str]) -> None:
        self._json(200, {"status": "ok"})

    def _get_adapters(self, parts: list[str], query: dict[str, str]) -> None:
        s = self.state
        if not parts:
            names = [t for t in sorted(s.current) if t.startswith(query.get("prefix", ""))]
            names = [t for t in names if query.get("method") in (None, _info(s, t)["method"])]
            if "limit" not in query:
                self._json(200, {"adapters": [_info(s, t) for t in names], "total": len(names), "next_cursor": None})
                return
            after = [t for t in names if t > query.get("cursor", "")]
            page = after[: int(query["limit"])]
            more = len(after) > len(page)
            self._json(200, {"adapters": [_info(s, t) for t in page], "total": len(names),
                             "next_cursor": page[-1] if more else None})
            return
        task = parts[0]
        if task not in s.current:
            self._error(404, "unknown_task", f"no task {task!r}")
            return
        if len(parts) == 1:
            versions = [
                {"version": i + 1, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "created_at": _now(),
                 "current": i + 1 == s.current[task]}
                for i, d in enumerate(s.adapters[task])
            ]
            self._json(200, {**_info(s, task), "versions": versions})
            return
        version = int(query.get("version", s.current[task]))
        if not 1 <= version <= len(s.adapters[task]):
            self._error(404, "unknown_version", f"task {task!r} has no version {version}")
            return
        data = s.adapters[task][version - 1]
        stored = hashlib.sha256(data).hexdigest()
        if "dtype" in query:  # the server's ?dtype= conversion (same function, numpy only)
            if query["dtype"] not in ("float32", "float16"):
                self._error(422, "invalid_request", f"dtype must be float32 or float16, got {query['dtype']!r}")
                return
            data = convert_adapter(data, query["dtype"])  # type: ignore[arg-type]
        sha = hashlib.sha256(data).hexdigest()
        headers = {"ETag": f'"{sha}"', "X-Adapter-Version": str(version), "X-Adapter-Sha256": stored}
        if self._etag_hit(sha):
            self._send(304, headers=headers)
            return
        self._send(200, data, headers=headers, kind="adapter", content_type="application/octet-stream")

    def _put_adapters(self, parts: list[str], query: dict[str, str]) -> None:
        data = self._body()
        if not self._authorized():
            return
        try:
            meta = read_adapter_meta(data)
        except Exception as e:  # noqa: BLE001 - any bad file is the client's fault here
            self._error(400, "invalid_adapter", str(e))
            return
        if self.state.backbone_sha256 is not None and meta.backbone_sha256 != self.state.backbone_sha256:
            self._error(409, "incompatible_adapter", "the adapter was trained on another backbone")
            return
        version = self.state.publish(parts[0], data)
        self._json(201, {"task": parts[0], "version": version, "sha256": hashlib.sha256(data).hexdigest()})

    def _post_adapters(self, parts: list[str], query: dict[str, str]) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return
        task, version = parts[0], int(body["version"])
        if task not in self.state.current or not 1 <= version <= len(self.state.adapters[task]):
            self._error(404, "unknown_version", f"task {task!r} has no version {version}")
            return
        self.state.current[task] = version
        sha = hashlib.sha256(self.state.adapters[task][version - 1]).hexdigest()
        self._json(200, {"task": task, "version": version, "sha256": sha})

    def _delete_adapters(self, parts: list[str], query: dict[str, str]) -> None:
        if not self._authorized():
            return
        task = parts[0]
        if task not in self.state.current:
            self._error(404, "unknown_task", f"no task {task!r}")
            return
        n = len(self.state.adapters.pop(task))
        del self.state.current[task]
        self._json(200, {"task": task, "versions_removed": n})

    def _post_predict(self, parts: list[str], query: dict[str, str]) -> None:
        data = self._body()
        task = query.get("task", "")
        if task not in self.state.current:
            self._error(404, "unknown_task", f"no task {task!r}")
            return
        if not data:
            self._error(400, "invalid_video", "the clip is empty (0 bytes)")
            return
        if not self._is_video(data):
            return
        info = _info(self.state, task)
        k = min(int(query.get("topk", 5)), info["num_classes"])
        preds = [{"label": info["labels"][i], "index": i, "score": 1.0 / (i + 2)} for i in range(k)]
        self._json(200, {"task": task, "version": info["version"], "adapter_sha256": info["sha256"],
                         "predictions": preds, "timing_ms": {"decode": 1.0, "queue": 0.1, "model": 2.0, "total": 3.5}})

    def _post_datasets(self, parts: list[str], query: dict[str, str]) -> None:
        data = self._body()
        if not self._authorized():
            return
        task, label, split = parts[0], query["label"], query.get("split", "train")
        if not self._is_video(data):
            return
        counts = self.state.clips.setdefault(task, {}).setdefault(split, {})
        counts[label] = counts.get(label, 0) + 1
        self._json(201, {"task": task, "label": label, "split": split, "sha256": hashlib.sha256(data).hexdigest(),
                         "size": len(data), "duplicate": False})

    def _is_video(self, data: bytes) -> bool:
        """In contract mode, what the real server does first: decode the container's metadata (torch-free)."""
        if self.state.backbone_sha256 is None:
            return True
        from vpetl.errors import InvalidVideo
        from vpetl.video import decode_info

        try:
            decode_info(data)
        except InvalidVideo as e:
            self._error(400, "invalid_video", e.message)
            return False
        return True

    def _get_datasets(self, parts: list[str], query: dict[str, str]) -> None:
        counts = self.state.clips.get(parts[0], {})
        self._json(200, {"task": parts[0], "counts": counts, "total": sum(sum(c.values()) for c in counts.values())})

    def _post_jobs(self, parts: list[str], query: dict[str, str]) -> None:
        params = json.loads(self._body() or b"{}")
        if not self._authorized():
            return
        task = str(params.get("task", ""))
        if self.state.backbone_sha256 is not None and not any(self.state.clips.get(task, {}).values()):
            self._error(422, "invalid_dataset", f"task {task!r} has no uploaded clips")  # as the real server
            return
        job_id = f"{len(self.state.jobs) + 1:016x}"
        now = datetime.now(timezone.utc).timestamp()
        self.state.jobs[job_id] = {"id": job_id, "state": "queued", "params": params, "progress": {}, "result": {},
                                   "created_at": now, "updated_at": now, "polls": 0}
        self._json(202, {"job_id": job_id, "state": "queued"})

    def _get_jobs(self, parts: list[str], query: dict[str, str]) -> None:
        if not parts:
            self._json(200, {"jobs": [self._public(j) for j in self.state.jobs.values()]})
            return
        job = self.state.jobs.get(parts[0])
        if job is None:
            self._error(404, "unknown_job", f"no job {parts[0]!r}")
            return
        job["polls"] += 1  # each poll advances the simulated training by one epoch
        epochs = self.state.job_epochs
        epoch = min(job["polls"] - 1, epochs)
        job["state"] = "queued" if epoch == 0 else ("running" if epoch < epochs else "succeeded")
        job["progress"] = {"epoch": epoch, "epochs": epochs, "loss": 1.0 / (1 + epoch), "acc": epoch / epochs}
        if job["state"] == "succeeded":
            job["version"] = self.state.current.get(job["params"].get("task"), 1)
            job["result"] = {"published": True, "version": job["version"]}
        self._json(200, self._public(job))

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k != "polls"}

    def _get_backbone(self, parts: list[str], query: dict[str, str]) -> None:
        if not parts:
            self._json(200, {"name": "fake", "family": "video_vit", "sha256": self.state.backbone_sha256 or "0" * 64,
                             "input_spec": {}, "num_features": 64, "parameters": 1})
            return
        family = query.get("family") or "default"
        data = self.state.onnx.get(family) or self.state.onnx.get("default")
        if data is None:
            self._error(404, "onnx_not_exported", "no ONNX graph")
            return
        sha = hashlib.sha256(data).hexdigest()
        if self._etag_hit(sha):
            self._send(304, headers={"ETag": f'"{sha}"'})
            return
        self._send(200, data, headers={"ETag": f'"{sha}"'}, kind="onnx", content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeState, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state


class FakeServer:
    """``with FakeServer() as fake: Client(fake.url)``; ``fake.state`` is the server's memory."""

    def __init__(self, state: FakeState | None = None, port: int = 0) -> None:
        self.state = state or FakeState()
        self._server = _Server(self.state, port)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
