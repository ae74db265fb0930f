"""Local inference from the cache: one task's adapter and graph, one onnxruntime Runner, quick offline fallback.

:class:`LocalTask` is what ``vpetl-edge predict --local`` and ``vpetl-edge watch`` run clips through. It keeps the
Runner (session built once, adapter bound once) and re-checks the server for a newer adapter only when asked
(:meth:`LocalTask.refresh`), with a short timeout and no retries whenever a cached adapter exists: a server that
refuses connections, or accepts them and never answers, costs at most ``FALLBACK_TIMEOUT_S`` before the cached
adapter is used. Nothing cached yet: the normal client (retries, long timeout) downloads what is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_client.cache import EdgeCache, graph_key
from edge_client.runner import METHOD_COMPONENTS, Runner, graph_family_fits
from edge_client.sdk import Client, ConnectionFailed, Progress
from vpetl.artifact import AdapterFile
from vpetl.errors import IncompatibleAdapter, VpetlError
from vpetl.video import VideoSource

logger = logging.getLogger(__name__)

#: seconds a freshness check may take before the cached adapter is used (connect and read each; no retries)
FALLBACK_TIMEOUT_S = 1.5


def quick_client(server: str, token: str | None, timeout: float = FALLBACK_TIMEOUT_S) -> Client:
    """A client that gives up fast: for checks that have a cached answer to fall back on."""
    return Client(server, token=token, timeout=timeout, retries=0)


class LocalTask:
    """One task predicted on this device from the cache.

    Args:
        cache: the edge cache.
        task: task name.
        version: a pinned adapter version (None: the current one).
        warn: called with a one-line message when the server is unreachable and the cache is used.
    """

    def __init__(
        self, cache: EdgeCache, task: str, version: int | None = None, warn: Callable[[str], None] | None = None
    ) -> None:
        self.cache, self.task, self.version = cache, task, version
        self._warn = warn or (lambda message: logger.warning("%s", message))
        self.runner: Runner | None = None
        self.graph: Path | None = None
        self.adapter: AdapterFile | None = None
        self.entry_version: int | None = None
        self.online = True

    def refresh(
        self,
        client: Client,
        quick: Client | None = None,
        *,
        offline: bool = False,
        progress_adapter: Progress | None = None,
        progress_graph: Progress | None = None,
    ) -> str:
        """Bring the adapter up to date (one conditional GET) and make sure a graph for it is cached.

        ``quick`` is used for the check when a usable adapter is cached (it falls back to it when the server is
        unreachable); ``client`` otherwise and for downloads of a graph. ``offline``: the caller knows the server
        is away; a usable cached adapter is taken without asking. Returns ``updated``, ``current`` or ``offline``.
        """
        kept = self.cache.adapter(self.task)
        usable = kept is not None and (self.version is None or kept.version == self.version)
        checker = quick if (quick is not None and usable) else client
        try:
            if offline and usable:
                raise ConnectionFailed("the server is known to be unreachable")
            # keep the dtype a `sync --dtype` chose: a re-download is not "current"
            entry, changed = self.cache.pull_adapter(
                checker, self.task, self.version, progress=progress_adapter, dtype=kept.dtype if kept else None
            )
            state, self.online = ("updated" if changed else "current"), True
        except ConnectionFailed:
            if not usable:
                raise
            assert kept is not None
            entry, state, self.online = kept, "offline", False
            if not offline:
                self._warn(f"server unreachable: using the cached {self.task} adapter (version {entry.version})")
        if self.adapter is None or self.adapter.sha256 != entry.sha256:
            self._load(client, progress_graph)
        self.entry_version = entry.version
        return state

    def _load(self, client: Client, progress: Progress | None) -> None:
        adapter = self.cache.load_adapter(self.task)
        if adapter.meta.method not in METHOD_COMPONENTS:
            raise IncompatibleAdapter(
                f"task {self.task!r} uses {adapter.meta.method!r}, which no edge graph runs "
                f"({', '.join(METHOD_COMPONENTS)} do); predict without --local"
            )
        record = self.cache.graph_for(adapter)
        if record is None:
            self.cache.pull_backbone(client, adapter.meta.method, progress=progress)
            record = self.cache.graph_for(adapter)
            if record is None:
                raise IncompatibleAdapter(f"the server's {adapter.meta.method} graph cannot run task {self.task!r}")
        path, preoptimized = self.cache.runner_graph(record)
        if self.runner is None or self.graph != path:
            self.runner, self.graph = Runner(path, preoptimized=preoptimized), path
        self.runner.activate(adapter)  # bind now: the first clip pays no switch
        self.adapter = adapter

    def predict(self, clip: VideoSource, topk: int = 5) -> dict[str, Any]:
        """One clip -> the server's response shape plus ``local: true`` and the graph used."""
        assert self.runner is not None and self.adapter is not None, "call refresh() first"
        r = self.runner.predict(clip, self.adapter, topk=topk, version=self.entry_version)
        info = self.runner.info
        graph = "merged" if info.merged_task else info.family
        return {"local": True, "graph": graph, "quant": info.quant, **r.model_dump(mode="json")}


def variant_agreements(c: Client, store: EdgeCache, quant: str | None, merged: list[str]) -> dict[str, dict[str, Any]]:
    """For every variant this sync keeps (the int8 shared graph, merged graphs): the server's measurement of it
    against the fp32 graph on each task's validation clips, with the task's current adapter."""
    found: dict[str, dict[str, Any]] = {}
    asks: list[tuple[str, str, bool, str | None]] = [(t, quant or "fp32", True, None) for t in merged]
    if quant not in (None, "fp32"):
        shared = store.backbones().get(graph_key(None, quant))
        for task in store.tasks():
            entry = store.adapter(task)
            if shared and entry and graph_family_fits(tuple(shared.get("components", ())), entry.method or ""):
                asks.append((task, quant, False, shared.get("family")))
    for task, q, is_merged, family in asks:
        name = f"{task} ({'merged' if is_merged else family}, {q})"
        try:
            found[name] = c.graph_agreement(task, q, merged=is_merged, family=family)
        except VpetlError as e:
            found[name] = {"error": f"[{e.code}] {e.message}"}
    return found


def agreement_line(name: str, a: dict[str, Any]) -> str:
    if "error" in a:
        return f"  {name}: agreement with fp32 not measured: {a['error']}"
    if not a.get("clips"):
        return f"  {name}: no validation clips on the server to measure agreement with fp32"
    return (
        f"  {name}: top-1 agrees with fp32 on {a['agree']}/{a['clips']} validation clips "
        f"({100 * a['agreement']:.1f}%), max |Δlogit| {a['max_abs_logit_diff']:.2g}"
    )


__all__ = ["FALLBACK_TIMEOUT_S", "LocalTask", "agreement_line", "quick_client", "variant_agreements"]
