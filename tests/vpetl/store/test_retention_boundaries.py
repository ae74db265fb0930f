"""Retention's smallest setting, which the mutation run (docs/mutation.md) found unpinned: ``keep_versions=1``
must keep only the newest (current) version and free every blob only older versions used (a ``keep > 1`` guard
in the publish script would silently keep everything). On standalone Redis and the cluster (``redis_url``)."""

from __future__ import annotations

import hashlib

from vpetl.store import AdapterStore
from vpetl.store import keys as k
from vpetl.store.clients import redis_client

META = {"method": "bapat", "trainable_params": 10, "num_classes": 3, "labels": ["a", "b", "c"]}


def test_keep_one_keeps_only_the_current_version(redis_url: str) -> None:
    raw = redis_client(redis_url)
    try:
        with AdapterStore(redis_url, keep_versions=1) as store:
            for data in (b"A", b"B", b"C"):
                store.publish("one", data, META)
            assert [r.version for r in store.history("one")] == [3]
            assert store.get_pointer("one") == 3 and store.get_bytes("one")[1] == b"C"
            assert set(raw.hkeys(k.blobs_key("one"))) == {hashlib.sha256(b"C").hexdigest().encode()}
    finally:
        raw.close()
