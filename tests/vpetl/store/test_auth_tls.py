"""The store over a password-protected standalone redis-server (``redis://:<password>@``) and over TLS
(``rediss://``, a self-signed certificate made here with ``cryptography``; Debian's redis-server 7 is built with
TLS). The cluster's password path is in test_cluster.py."""

from __future__ import annotations

import datetime
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.vpetl.store.conftest import _free_port, find_binary
from vpetl.store import AdapterStore

META = {"method": "bapat"}
PASSWORD = "s3cret/with:odd@chars"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def _start(args: list[str], directory: Path) -> subprocess.Popen[bytes]:
    server = find_binary("redis-server")
    if server is None:
        pytest.skip("no redis-server binary")
    log = (directory / "redis.log").open("wb")
    return subprocess.Popen([server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                             str(directory), *args], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], ping: object, directory: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("redis-server exited: " + (directory / "redis.log").read_text()[-500:])
        try:
            if ping():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    pytest.fail("redis-server did not answer")


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[int]:
    port = _free_port()
    proc = _start(["--port", str(port), "--requirepass", PASSWORD], tmp_path)
    _wait(proc, lambda: redis.Redis(port=port, password=PASSWORD).ping(), tmp_path)
    yield port
    proc.terminate()
    proc.wait(10)


def test_password_url(password_server: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=password_server).ping()  # without the password: refused
    url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{password_server}/0"
    with AdapterStore(url) as store:
        record = store.publish("secret", b"bytes", META)
        assert store.get_bytes("secret") == (record, b"bytes")
        assert [t.task for t in store.list_page().tasks] == ["secret"]
    with pytest.raises(redis.AuthenticationError), AdapterStore(f"redis://:wrong@127.0.0.1:{password_server}/0") as s:
        s.get_pointer("secret")


def test_tls_url_with_a_password(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    proc = _start(["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                   "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--requirepass", PASSWORD],
                  tmp_path)  # fmt: skip
    try:
        tls = {"host": "127.0.0.1", "port": port, "password": PASSWORD, "ssl": True, "ssl_ca_certs": str(cert)}
        _wait(proc, lambda: redis.Redis(**tls).ping(), tmp_path)  # type: ignore[arg-type]
        url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0?ssl_ca_certs={quote(str(cert))}"
        with AdapterStore(url) as store:
            record = store.publish("tls", b"over tls", META)
            assert store.detail("tls")[0].current == record and store.get_bytes("tls")[1] == b"over tls"
        with pytest.raises((redis.ConnectionError, OSError)):
            redis.Redis(port=port, password=PASSWORD, socket_timeout=2).ping()  # plain TCP to a TLS port: no
    finally:
        proc.terminate()
        proc.wait(10)
