"""``GET /adapters`` paging from the SDK and ``vpetl-edge adapters ls`` (against the fake server, which pages the
way the real one does: names in order after the cursor, ``total`` over the prefix)."""

from __future__ import annotations

from edge_helpers import make_adapter
from fake_server import FakeServer

from edge_client.sdk import Client


def test_iter_adapters_walks_every_page(fake: FakeServer) -> None:
    data = make_adapter("bapat", {"bottleneck": 4}, task="t")[1]
    names = [f"t{i:02d}" for i in range(11)] + ["other"]
    for name in names:
        fake.state.publish(name, data)
    with Client(fake.url, timeout=5) as client:
        page = client.adapters_page(limit=4)
        assert [a.task for a in page.adapters] == sorted(names)[:4] and page.total == 12 and page.next_cursor
        assert [a.task for a in client.iter_adapters(page_size=5)] == sorted(names)
        assert [a.task for a in client.iter_adapters(prefix="t0", page_size=3)] == names[:10]
        assert [a.task for a in client.adapters()] == sorted(names)  # the unpaged list is unchanged
