"""HTTP SDK for the vpetl server (httpx; torch-free): typed results, retries with backoff, stable error codes.

>>> from edge_client import Client
>>> with Client("http://127.0.0.1:8000") as c:
...     r = c.predict("clip.mp4", task="hmdb51", topk=3)
...     print(r.predictions[0].label, r.version)

- **Typed**: responses are the pydantic models of :mod:`vpetl.protocol` (the schemas the server declares).
- **Retries**: a refused / timed-out connection (the request never reached the server, so even a POST is safe to
  resend) and ``503`` (the server's bounded queue said "overloaded") are retried ``retries`` times with exponential
  backoff; a ``Retry-After`` header sets the wait instead. Idempotent requests also retry a connection dropped
  mid-response.
- **Errors**: a ``{"error": {"code", "message"}}`` body raises the :mod:`vpetl.errors` class with that code
  (``unknown_task`` → :class:`~vpetl.errors.UnknownTask`, …); unknown codes raise a plain ``VpetlError`` carrying the
  code. Every raised error has ``http_status``. A server that cannot be reached raises :class:`ConnectionFailed`.
- **Token**: the ``token`` argument or ``VPETL_TOKEN``, sent as ``Authorization: Bearer …`` on every request.
- **Counting**: ``client.stats`` counts response body bytes (all, adapters, ONNX) — a ``sync`` with nothing new must
  move no adapter bytes, and tests and the benchmark check that by counting.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from vpetl import errors as E
from vpetl.protocol import (
    AdapterDeleted,
    AdapterDetail,
    AdapterInfo,
    AdapterList,
    AdapterRef,
    BackboneInfo,
    ClipUploaded,
    DatasetCounts,
    JobCreated,
    JobInfo,
    JobList,
    PredictionResponse,
)

DEFAULT_SERVER = "http://127.0.0.1:8000"
CHUNK = 256 * 1024
#: progress(done_bytes, total_bytes or None)
Progress = Callable[[int, int | None], None]
M = TypeVar("M", bound=BaseModel)


class ConnectionFailed(E.VpetlError):
    """The server could not be reached (refused, timed out, dropped) after every retry."""

    code = "connection_error"
    http_status = 0


@dataclass
class TransferStats:
    """Response body bytes received, by kind, and requests sent (retries included)."""

    requests: int = 0
    bytes_in: int = 0
    adapter_bytes: int = 0
    onnx_bytes: int = 0
    bytes_out: int = 0


class Blob(bytes):
    """Downloaded bytes with the response's ``etag`` (quotes stripped) and ``version`` header if any, and
    ``source_sha256``: the stored artifact's sha256 (differs from the ETag when the server converted the dtype)."""

    etag: str | None
    version: int | None
    source_sha256: str | None

    def __new__(
        cls, data: bytes, etag: str | None = None, version: int | None = None, source_sha256: str | None = None
    ) -> Blob:
        obj = super().__new__(cls, data)
        obj.etag, obj.version, obj.source_sha256 = etag, version, source_sha256
        return obj


@dataclass
class OnnxDownload:
    """The backbone graph: written to ``path`` (or held in ``data``), with its ETag."""

    etag: str | None
    size: int
    path: Path | None = None
    data: bytes | None = None


class AdapterPage(AdapterList):
    """``GET /adapters?limit=…``: a page of tasks (the server's ``AdapterPage``)."""

    total: int
    next_cursor: str | None = None


def _error_classes() -> dict[str, type[E.VpetlError]]:
    """code → class for every error class in vpetl.errors (so a new error there maps without touching this)."""
    out: dict[str, type[E.VpetlError]] = {}
    stack: list[type[E.VpetlError]] = [E.VpetlError]
    while stack:
        cls = stack.pop()
        out.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    out[ConnectionFailed.code] = ConnectionFailed
    return out


ERROR_CLASSES = _error_classes()


def error_from_response(response: httpx.Response) -> E.VpetlError:
    """The VpetlError a ``{"error": {"code", "message"}}`` response stands for (any body shape is handled)."""
    code, message = "http_error", ""
    try:
        body = response.json()
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            code = str(detail.get("code") or code)
            message = str(detail.get("message") or "")
    except (ValueError, UnicodeDecodeError):
        pass
    if not message:
        text = response.text.strip().replace("\n", " ") if response.content else ""
        message = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text[:200]}" if text else "")
    cls = ERROR_CLASSES.get(code, E.VpetlError)
    error = cls(message, code=code)
    error.http_status = response.status_code  # the status the server used, whatever the class default
    return error


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _etag(response: httpx.Response) -> str | None:
    value = response.headers.get("etag")
    if value is None:
        return None
    return value.removeprefix("W/").strip('"')


def _version_header(response: httpx.Response) -> int | None:
    for name in ("x-vpetl-version", "x-adapter-version"):
        if name in response.headers:
            try:
                return int(response.headers[name])
            except ValueError:
                return None
    return None


def _read_file_chunks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            done += len(chunk)
            if progress is not None:
                progress(done, total)
            yield chunk


def _bytes_chunks(data: bytes, progress: Progress | None) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        if progress is not None:
            progress(start + len(chunk), len(data))
        yield chunk


def _media_type(path: Path | None) -> str:
    guess = mimetypes.guess_type(path.name)[0] if path is not None else None
    return guess if guess and guess.startswith("video/") else "application/octet-stream"


class Client:
    """A vpetl server client.

    Args:
        server: base URL (default ``VPETL_SERVER`` or http://127.0.0.1:8000).
        token: API key or admin token, sent on every request (default ``VPETL_TOKEN``).
        timeout: seconds per request (connect, read and write each).
        retries: how many times a refused connection or a 503 is retried (0 = never).
        backoff: first wait in seconds; doubled per retry, capped by ``max_backoff``.
        max_backoff: the longest wait, also for a server's Retry-After.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        retries: int = 3,
        *,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = (server or os.environ.get("VPETL_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.token = token if token is not None else os.environ.get("VPETL_TOKEN") or None
        self.retries, self.backoff, self.max_backoff = max(0, int(retries)), backoff, max_backoff
        self.stats = TransferStats()
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it to record the waits
        headers = {"User-Agent": "vpetl-edge/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.server, timeout=timeout, headers=headers, transport=transport)

    # ------------------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, attempt: int, response: httpx.Response | None) -> None:
        delay = _retry_after(response) if response is not None else None
        if delay is None:
            delay = self.backoff * (2**attempt)
        self._sleep(min(delay, self.max_backoff))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], Iterator[bytes] | bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One request with retries; raise the mapped VpetlError for any status >= 400 not in ``ok``.

        ``body`` is a factory so a retry re-reads the file from the start. With ``stream`` the caller must close
        the response (its body is not read here).
        """
        params = {k: v for k, v in (params or {}).items() if v is not None}
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        attempt = 0
        while True:
            request = self._http.build_request(
                method,
                path,
                params=params,
                json=json,
                content=body() if body is not None else None,
                headers=dict(headers or {}),
            )
            self.stats.requests += 1
            try:
                response = self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                retryable, failure = True, e
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteError) as e:
                retryable, failure = idempotent, e
            else:
                if response.status_code == 503 and attempt < self.retries:
                    response.read()
                    response.close()
                    self._wait(attempt, response)
                    attempt += 1
                    continue
                if response.status_code >= 400 and response.status_code not in ok:
                    response.read()
                    self.stats.bytes_in += response.num_bytes_downloaded
                    response.close()
                    raise error_from_response(response)
                if not stream:
                    response.read()
                    self.stats.bytes_in += response.num_bytes_downloaded
                    response.close()
                return response
            if not retryable or attempt >= self.retries:
                raise ConnectionFailed(
                    f"cannot reach the vpetl server at {self.server} ({type(failure).__name__}: {failure}); "
                    "is it running? (--server / VPETL_SERVER)"
                ) from failure
            self._wait(attempt, None)
            attempt += 1

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate(self._send("GET", path, params=params).json())

    def _download(self, response: httpx.Response, kind: str, sink: Any, progress: Progress | None) -> int:
        """Stream a response body into ``sink.write``; count it; return its size."""
        total = int(response.headers["content-length"]) if "content-length" in response.headers else None
        done = 0
        try:
            for chunk in response.iter_bytes(CHUNK):
                sink.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        finally:
            response.close()
        wire = response.num_bytes_downloaded  # bytes on the wire (compressed, if the server compressed)
        self.stats.bytes_in += wire
        if kind == "adapter":
            self.stats.adapter_bytes += wire
        elif kind == "onnx":
            self.stats.onnx_bytes += wire
        return done

    @staticmethod
    def _task(task: str) -> str:
        return quote(task, safe="")

    # ------------------------------------------------------------------------------------------ predict
    def predict(
        self,
        clip: str | os.PathLike[str] | bytes,
        task: str,
        version: int | None = None,
        topk: int = 5,
        progress: Progress | None = None,
    ) -> PredictionResponse:
        """Top-k labels for one clip (a path or the file's bytes) under ``task``'s adapter (current version)."""
        path = None if isinstance(clip, (bytes, bytearray, memoryview)) else Path(clip)
        if path is not None and not path.is_file():
            raise E.InvalidVideo(f"'{path}': no such file")
        size = path.stat().st_size if path is not None else len(clip)  # type: ignore[arg-type]
        body = (
            (lambda: _read_file_chunks(path, progress))
            if path is not None
            else (lambda: _bytes_chunks(bytes(clip), progress))
        )  # type: ignore[arg-type]
        self.stats.bytes_out += size
        response = self._send(
            "POST",
            "/predict",
            params={"task": task, "version": version, "topk": topk},
            body=body,
            headers={"Content-Type": _media_type(path), "Content-Length": str(size)},
        )
        return PredictionResponse.model_validate(response.json())

    # ----------------------------------------------------------------------------------------- adapters
    def adapters(self) -> list[AdapterInfo]:
        """Every task with its current version."""
        return self._get("/adapters", AdapterList).adapters

    def adapters_page(
        self, limit: int = 100, cursor: str | None = None, prefix: str | None = None, method: str | None = None
    ) -> AdapterPage:
        """One page of tasks in name order (``GET /adapters?limit=``): ``next_cursor`` leads on, ``total`` counts
        the names matching ``prefix``. A server from before paging answers the whole list (no cursor)."""
        params = {"limit": limit, "cursor": cursor, "prefix": prefix, "method": method}
        body = self._send("GET", "/adapters", params={k: v for k, v in params.items() if v is not None}).json()
        body.setdefault("total", len(body.get("adapters", [])))
        return AdapterPage.model_validate(body)

    def iter_adapters(
        self, prefix: str | None = None, method: str | None = None, page_size: int = 500
    ) -> Iterator[AdapterInfo]:
        """Every matching task, page by page (bounded answers however many tasks the server holds)."""
        cursor: str | None = None
        while True:
            page = self.adapters_page(page_size, cursor, prefix, method)
            yield from page.adapters
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def adapter(self, task: str) -> AdapterDetail:
        """One task with its version history."""
        return self._get(f"/adapters/{self._task(task)}", AdapterDetail)

    def download_adapter(
        self,
        task: str,
        version: int | None = None,
        etag: str | None = None,
        progress: Progress | None = None,
        dtype: str | None = None,
    ) -> Blob | None:
        """The artifact bytes (a :class:`Blob` carrying the ETag), or None when ``etag`` is still current (304).

        ``dtype="float16"`` asks the server for the tensors in half precision (half the bytes of an fp32 adapter;
        the ETag is then the sha256 of the converted bytes)."""
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        params = {"version": version, "dtype": dtype}
        response = self._send(
            "GET",
            f"/adapters/{self._task(task)}/download",
            params={k: v for k, v in params.items() if v is not None},
            headers=headers,
            stream=True,
            ok=(304,),
        )
        if response.status_code == 304:
            response.close()
            return None
        buf = _Buffer()
        self._download(response, "adapter", buf, progress)
        return Blob(
            buf.getvalue(), _etag(response), _version_header(response), response.headers.get("x-adapter-sha256")
        )

    def push_adapter(self, path: str | os.PathLike[str] | bytes, task: str) -> AdapterRef:
        """Upload an artifact as the task's new version (write token needed)."""
        data = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
        self.stats.bytes_out += len(data)
        response = self._send(
            "PUT",
            f"/adapters/{self._task(task)}",
            body=lambda: data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return AdapterRef.model_validate(response.json())

    def delete_adapter(self, task: str) -> AdapterDeleted:
        return AdapterDeleted.model_validate(self._send("DELETE", f"/adapters/{self._task(task)}").json())

    def rollback(self, task: str, version: int) -> AdapterRef:
        """Make an existing version current again."""
        response = self._send("POST", f"/adapters/{self._task(task)}/rollback", json={"version": int(version)})
        return AdapterRef.model_validate(response.json())

    # ----------------------------------------------------------------------------------------- datasets
    def upload_clip(
        self,
        path: str | os.PathLike[str],
        task: str,
        label: str,
        split: str = "train",
        progress: Progress | None = None,
    ) -> ClipUploaded:
        """Upload one labelled clip, streamed from disk (``progress(done, total)`` per chunk)."""
        path = Path(path)
        if not path.is_file():
            raise E.InvalidVideo(f"'{path}': no such file")
        size = path.stat().st_size
        self.stats.bytes_out += size
        response = self._send(
            "POST",
            f"/datasets/{self._task(task)}/clips",
            params={"label": label, "split": split},
            body=lambda: _read_file_chunks(path, progress),
            headers={"Content-Type": _media_type(path), "Content-Length": str(size)},
        )
        return ClipUploaded.model_validate(response.json())

    def dataset(self, task: str) -> DatasetCounts:
        return self._get(f"/datasets/{self._task(task)}", DatasetCounts)

    # --------------------------------------------------------------------------------------------- jobs
    def create_job(self, **params: Any) -> JobCreated:
        """Queue a training job (write token needed): ``task`` plus method, bottleneck, scale, epochs, batch_size,
        lr, … (see :class:`vpetl.protocol.JobRequest`; None values are left to the server's defaults)."""
        body = {k: v for k, v in params.items() if v is not None}
        return JobCreated.model_validate(self._send("POST", "/jobs", json=body).json())

    def job(self, job_id: str) -> JobInfo:
        """One job: state, progress (epoch, loss, val top-1, …), result or error."""
        return self._get(f"/jobs/{quote(str(job_id), safe='')}", JobInfo)

    def jobs(self, limit: int | None = None) -> list[JobInfo]:
        """Recent jobs, newest first."""
        return self._get("/jobs", JobList, limit=limit).jobs

    # ----------------------------------------------------------------------------------------- backbone
    def backbone(self) -> BackboneInfo:
        return self._get("/backbone", BackboneInfo)

    def download_onnx(
        self,
        etag: str | None = None,
        *,
        dest: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        family: str | None = None,
        quant: str | None = None,
        task: str | None = None,
    ) -> OnnxDownload | None:
        """The backbone graph (adapter weights as inputs), streamed; None when ``etag`` is still current (304).

        ``quant="int8"`` asks for the int8 variant; ``task`` for that task's merged single-task graph (its current
        adapter folded in: the clip is the only input). With ``dest`` the bytes go to that file atomically (a temp
        file next to it, then rename) and are checked against the ETag (sha256 of the file); without it they are
        returned in ``data``.
        """
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        params = {"family": family, "quant": quant, "task": task}
        response = self._send("GET", "/backbone/onnx", params=params, headers=headers, stream=True, ok=(304,))
        if response.status_code == 304:
            response.close()
            return None
        tag = _etag(response)
        if dest is None:
            buf = _Buffer()
            size = self._download(response, "onnx", buf, progress)
            return OnnxDownload(etag=tag, size=size, data=buf.getvalue())
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with tmp.open("wb") as f:
                sink = _HashingWriter(f)
                size = self._download(response, "onnx", sink, progress)
                f.flush()
                os.fsync(f.fileno())
            if tag and len(tag) == 64 and sink.hexdigest() != tag:
                raise E.VpetlError(
                    f"the backbone graph's sha256 {sink.hexdigest()[:12]}… does not match its ETag {tag[:12]}… "
                    "(transfer corrupted?)",
                    code="integrity_error",
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return OnnxDownload(etag=tag or sink.hexdigest(), size=size, path=dest)

    def graph_agreement(
        self, task: str, quant: str = "int8", merged: bool = False, family: str | None = None
    ) -> dict[str, Any]:
        """How a graph variant agrees with the fp32 graph on ``task``'s validation clips (the server measures it
        with the task's current adapter): ``clips``, ``agree``, ``agreement`` (None: no clips), ``max_abs_logit_diff``.
        """
        params = {"task": task, "quant": quant, "merged": "true" if merged else None, "family": family}
        return dict(self._send("GET", "/backbone/onnx/agreement", params=params).json())

    def health(self) -> bool:
        """True when ``/healthz`` answers 200 (no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False


class _Buffer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self._parts.append(chunk)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _HashingWriter:
    def __init__(self, f: Any) -> None:
        self._f, self._h = f, hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._h.update(chunk)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


__all__ = [
    "Blob",
    "Client",
    "ConnectionFailed",
    "ERROR_CLASSES",
    "OnnxDownload",
    "TransferStats",
    "error_from_response",
]
