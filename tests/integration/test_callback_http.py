"""The callback HTTP client against real servers on loopback: it connects to the address the
policy checked, with the URL's host name in the Host header, TLS SNI and the certificate check;
it cuts an attempt off at its total deadline however slowly a server trickles bytes; it reads at
most a bounded answer, follows no redirect and takes nothing from the environment (.netrc,
proxies). Host names here resolve through fake resolvers to 127.0.0.1: nothing leaves the
machine."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.callbacks.http import (
    DeadlineExceeded,
    DestinationNotAllowed,
    callback_session,
    post_callback,
)
from services.local_stack import LOOPBACK_CALLBACK_NETWORKS
from shared.callback_destinations import DestinationPolicy, IPAddress


def to_loopback(host: str, port: int) -> Sequence[IPAddress]:
    return [IPv4Address("127.0.0.1")]


LOOPBACK = DestinationPolicy.parse(LOOPBACK_CALLBACK_NETWORKS, resolver=to_loopback)


def post(
    session: requests.Session, url: str, read_timeout: float = 2.0, total_timeout: float = 5.0
) -> Any:
    return post_callback(
        session,
        url,
        b'{"type":"test"}',
        {"X-Test": "1"},
        connect_timeout=1.0,
        read_timeout=read_timeout,
        total_timeout=total_timeout,
    )


# ---- Servers ----------------------------------------------------------------------------------


class Recorder:
    """An HTTP(S) server on loopback that records each request's Host header and answers
    `status` (with `headers`)."""

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hosts: list[str | None] = []
        self.authorizations: list[str | None] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.hosts.append(self.headers.get("Host"))
                recorder.authorizations.append(self.headers.get("Authorization"))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Trickler:
    """Answers each request with `head`, then `count` chunks of `chunk`, one every `interval`
    seconds: a slow-loris endpoint. Stops at once when the client hangs up."""

    def __init__(self, head: bytes, chunk: bytes, count: int, interval: float) -> None:
        self.head, self.chunk, self.count, self.interval = head, chunk, count, interval
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hung_up_after: list[float] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        started = time.monotonic()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(self.head)
                for _ in range(self.count):
                    conn.sendall(self.chunk)
                    time.sleep(self.interval)
            except OSError:
                self.hung_up_after.append(time.monotonic() - started)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in started:
        server.close()


def tls_for(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for `name` from a throwaway CA, and the CA file."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MyoTriage test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file


# ---- Pinning ----------------------------------------------------------------------------------


def test_tls_goes_to_the_checked_address_with_sni_and_certificate_on_the_host_name(
    tmp_path: Path, servers: list[Any]
) -> None:
    context, ca_file = tls_for(tmp_path, "ehr.test")
    sni: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment]
    receiver = Recorder(204, tls=context)
    servers.append(receiver)
    asked: list[str] = []

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        asked.append(host)
        return [IPv4Address("127.0.0.1")]

    policy = DestinationPolicy.parse(LOOPBACK_CALLBACK_NETWORKS, resolver=resolve)
    session = callback_session(policy, verify=str(ca_file))

    answer = post(session, f"https://ehr.test:{receiver.port}/hook")

    assert answer.status_code == 204
    assert asked == ["ehr.test"]  # one lookup; the connection went to its answer
    assert sni == ["ehr.test"]
    assert receiver.hosts == [f"ehr.test:{receiver.port}"]
    # The certificate is checked against the URL's name (not the address, not skipped).
    with pytest.raises(requests.exceptions.SSLError):
        post(session, f"https://other.test:{receiver.port}/hook")
    assert len(receiver.hosts) == 1


def test_a_destination_the_policy_refuses_is_never_contacted(servers: list[Any]) -> None:
    receiver = Recorder()
    servers.append(receiver)
    session = callback_session(DestinationPolicy())  # production: no allowlist
    for url in (
        f"http://127.0.0.1:{receiver.port}/hook",
        f"http://localhost:{receiver.port}/hook",
        f"https://localhost:{receiver.port}/hook",
        f"http://[::ffff:127.0.0.1]:{receiver.port}/hook",
    ):
        with pytest.raises(DestinationNotAllowed) as refused:
            post(session, url)
        assert refused.value.code == "loopback", url
    assert receiver.hosts == []


def test_redirects_are_not_followed(servers: list[Any]) -> None:
    elsewhere = Recorder()
    redirecting = Recorder(307, {"Location": f"http://127.0.0.1:{elsewhere.port}/internal"})
    servers.extend([elsewhere, redirecting])
    answer = post(callback_session(LOOPBACK), f"http://ehr.test:{redirecting.port}/hook")
    assert answer.status_code == 307
    assert elsewhere.hosts == []


def test_nothing_is_taken_from_the_environment(
    servers: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Recorder()
    servers.append(receiver)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine ehr.test login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    # A proxy in the environment is ignored too (on purpose: it would connect for us, to an
    # address we did not check); this one does not exist, so using it would fail.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    session = callback_session(LOOPBACK)
    assert post(session, f"http://ehr.test:{receiver.port}/hook").status_code == 200
    assert receiver.authorizations == [None]
    with pytest.raises(DestinationNotAllowed):
        session.post(
            f"http://ehr.test:{receiver.port}/hook", proxies={"http": "http://127.0.0.1:9"}
        )


# ---- The total deadline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        # The status and headers at once, then the body a byte every 0.1 s.
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        # The headers themselves a byte every 0.1 s.
        b"HTTP/1.1 200 OK\r\nX-Slow: ",
    ],
    ids=["body", "headers"],
)
def test_a_trickling_endpoint_is_cut_off_at_the_total_deadline(
    head: bytes, servers: list[Any]
) -> None:
    trickler = Trickler(head, b"a", count=100, interval=0.1)  # 10 s if nobody hangs up
    servers.append(trickler)
    session = callback_session(LOOPBACK)
    started = time.monotonic()
    # Each byte comes well within the read timeout: only the total deadline can stop this.
    with pytest.raises(DeadlineExceeded):
        post(
            session,
            f"http://ehr.test:{trickler.port}/hook",
            read_timeout=0.5,
            total_timeout=1.0,
        )
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.0
    # The connection was closed, so the server stopped sending soon after.
    wait = time.monotonic() + 3
    while not trickler.hung_up_after and time.monotonic() < wait:
        time.sleep(0.05)
    assert trickler.hung_up_after and trickler.hung_up_after[0] < 2.5
    # The session is still usable for the next attempt.
    receiver = Recorder()
    servers.append(receiver)
    assert post(session, f"http://ehr.test:{receiver.port}/hook").status_code == 200


def test_a_large_answer_is_read_only_up_to_the_limit(servers: list[Any]) -> None:
    huge = Trickler(
        b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n",
        b"x" * 65536,
        count=1600,  # 100 MiB if we read it all
        interval=0.0,
    )
    servers.append(huge)
    started = time.monotonic()
    answer = post(callback_session(LOOPBACK), f"http://ehr.test:{huge.port}/hook")
    assert answer.status_code == 200
    assert time.monotonic() - started < 2.0
