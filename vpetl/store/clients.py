"""Redis clients built from a URL: standalone or Redis Cluster, blocking or asyncio.

URL convention (``VPETL_REDIS_URL``, ``--redis-url``)::

    redis://[[user]:password@]host[:port][/db]          one Redis server (also a managed endpoint, a proxy)
    rediss://…                                          the same over TLS
    unix:///path/to/redis.sock[?db=N]                   a local socket (the embedded default)
    redis+cluster://[[user]:password@]host[:port][,host[:port]…]   Redis Cluster: any reachable nodes as seeds
    rediss+cluster://…                                  Redis Cluster over TLS

Query parameters (``?ssl_cert_reqs=none``, ``?ssl_ca_certs=…``, ``?socket_timeout=…``) are redis-py's
``from_url`` options and apply to every node; a cluster URL refuses a database other than 0 (Cluster has only
db 0). The client discovers the rest of the cluster from the seeds and follows MOVED/ASK redirections itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.retry
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
DEFAULT_PORT = 6379

# Backoff 50 ms doubling to 1 s, 8 retries: rides out a Redis restart (≈3 s) without hanging a request for long.
RETRIES = 8
SOCKET_TIMEOUT_S = 10.0  # an artifact read of a few hundred MB on loopback takes well under this
CONNECT_TIMEOUT_S = 5.0

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def _client_options() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "decode_responses": False,  # blobs are bytes
    }


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=1.0, base=0.05)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` asks for a Redis Cluster client (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def split_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``(URL of the first node as redis[s]://, [(host, port), …] of every seed node)`` of a cluster URL.

    The first node's URL carries the credentials and the query string, so redis-py parses them as usual.
    """
    scheme, _, rest = url.partition("://")
    base = CLUSTER_SCHEMES.get(scheme.lower())
    if base is None:
        raise ValueError(f"not a Redis Cluster URL (expected redis+cluster:// or rediss+cluster://): {scheme}://…")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = []
    for part in hosts.split(","):
        split = urlsplit(f"{base}://{part}")
        try:
            port = split.port or DEFAULT_PORT
        except ValueError as e:
            raise ValueError(f"bad port in Redis Cluster URL node {part!r}") from e
        if not split.hostname or split.username or split.password:
            raise ValueError(f"bad node {part!r} in Redis Cluster URL: expected host[:port]")
        nodes.append((split.hostname, port))
    return f"{base}://{userinfo}{at}{hosts.split(',')[0]}{tail}", nodes


def _cluster_kwargs(url: str, parse_url: Any) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    first, nodes = split_cluster_url(url)
    kwargs = parse_url(first)
    if kwargs.pop("db", 0) != 0:
        raise ValueError("a Redis Cluster URL cannot name a database other than 0 (Cluster has only db 0)")
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    return kwargs, nodes


def redis_client(url: str) -> SyncClient:
    """A blocking client for ``url`` (see the module docstring for the schemes) that retries connection errors,
    so it reconnects after a Redis restart (and, on a cluster, re-discovers the slots after a failover)."""
    retry = redis.retry.Retry(_backoff(), RETRIES)
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, retry=retry, **_client_options())
    kwargs, nodes = _cluster_kwargs(url, redis.connection.parse_url)
    startup = [redis.cluster.ClusterNode(host, port) for host, port in nodes]
    return redis.cluster.RedisCluster(startup_nodes=startup, retry=retry, **{**_client_options(), **kwargs})


def async_redis_client(url: str) -> AsyncClient:
    """The asyncio counterpart of :func:`redis_client`."""
    retry = redis.asyncio.retry.Retry(_backoff(), RETRIES)
    if not is_cluster_url(url):
        return redis.asyncio.Redis.from_url(url, retry=retry, **_client_options())
    kwargs, nodes = _cluster_kwargs(url, redis.asyncio.connection.parse_url)
    # the async cluster client takes ssl=True instead of a connection class (as its own from_url does)
    if kwargs.pop("connection_class", None) is redis.asyncio.connection.SSLConnection:
        kwargs["ssl"] = True
    startup = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in nodes]
    return redis.asyncio.cluster.RedisCluster(startup_nodes=startup, retry=retry, **{**_client_options(), **kwargs})


def ping_url(url: str, timeout_s: float = 1.0) -> None:
    """PING the Redis that ``url`` names once (a cluster: every master), with short timeouts and no retries, for
    readiness loops. Raises ``redis.RedisError`` or ``OSError`` when it does not answer: a cluster client that
    cannot discover its slots (``RedisClusterException``, which is no ``RedisError``) raises ``redis.ConnectionError``.
    """
    client: SyncClient | None = None
    try:
        if is_cluster_url(url):
            kwargs, nodes = _cluster_kwargs(url, redis.connection.parse_url)
            startup = [redis.cluster.ClusterNode(host, port) for host, port in nodes]
            options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **kwargs}
            client = redis.cluster.RedisCluster(
                startup_nodes=startup, retry=redis.retry.Retry(_backoff(), 0), **options
            )
        else:
            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        if not client.ping():
            raise redis.ConnectionError(f"Redis did not answer PING within {timeout_s:g} s")
    except redis.exceptions.RedisClusterException as e:
        raise redis.ConnectionError(str(e)) from e
    finally:
        if client is not None:
            client.close()


def is_binary(client: SyncClient | AsyncClient) -> bool:
    """Whether the client returns bytes (``decode_responses=False``), as the stores need."""
    return not client.get_encoder().decode_responses
