"""HTTP for outbound callbacks: to the checked address only, and within a total deadline.

`callback_session(destinations)` is a requests.Session whose adapter, for every request,
resolves the URL's host once, checks each address against the `DestinationPolicy` and connects
to the checked one, keeping the Host header, TLS SNI and the certificate check on the URL's host
name. There is no second DNS lookup between check and connect for a rebinding DNS server to
answer differently. (The approach of `requests-hardened`'s IP filter adapter; that library has
no allowlist of networks, which tests, the local run and some deployments need.)

`post_callback` makes one POST without following redirects and reads at most `max_bytes` of
the answer, all within `total_timeout` seconds: a per-read timeout alone lets an endpoint that
sends a byte now and then hold a worker thread for ever. When the deadline passes, a watchdog
shuts the connection's socket down, which ends any blocked connect, TLS handshake or read.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from shared.callback_destinations import DestinationPolicy, DestinationRefused, HostUnresolved

if TYPE_CHECKING:  # the stubs' names for what the pool key is built from
    from requests.adapters import _HostParams, _PoolKwargs

MAX_RESPONSE_BYTES = 64 * 1024


class DestinationNotAllowed(requests.RequestException):
    """The destination policy refused the URL; `code` names the rule (for our logs only)."""

    def __init__(self, code: str, **kwargs: Any) -> None:
        super().__init__(f"destination not allowed ({code})", **kwargs)
        self.code = code


class DeadlineExceeded(requests.Timeout):
    """The attempt was still running when its total deadline passed."""


@dataclass(frozen=True)
class CallbackAnswer:
    status_code: int
    retry_after: str | None


def callback_session(
    destinations: DestinationPolicy, *, verify: bool | str | None = None
) -> requests.Session:
    """A session that sends only where `destinations` allows, to the address it checked.

    `verify` defaults to the CA bundle named by REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else
    certifi's: those variables are read here once because the session does not read the
    environment at all (below).
    """
    session = requests.Session()
    # No .netrc credentials and no proxies from the environment. Dropping the proxy variables
    # (HTTP(S)_PROXY, NO_PROXY) is intended: a proxy would make the connection, to an address
    # we did not check. (It also spares requests re-reading os.environ on every call.)
    session.trust_env = False
    session.verify = verify if verify is not None else _ca_bundle_from_environment()
    adapter = PinnedAdapter(destinations)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def post_callback(
    session: requests.Session,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout: float,
    read_timeout: float,
    total_timeout: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> CallbackAnswer:
    """POST once (no redirects), read at most `max_bytes` of the answer, within `total_timeout`.

    Raises DestinationNotAllowed, DeadlineExceeded, or another requests.RequestException.
    """
    with _Deadline(total_timeout) as deadline:
        try:
            with session.post(
                url,
                data=body,
                headers=headers,
                timeout=(connect_timeout, read_timeout),
                # A callback URL that redirects is a configuration error, and following it
                # would let the receiver point our signed request anywhere.
                allow_redirects=False,
                stream=True,
            ) as response:
                # Read a little of the body so the connection can be reused; ignore the rest.
                response.raw.read(max_bytes, decode_content=False)
                answer = CallbackAnswer(response.status_code, response.headers.get("Retry-After"))
            # A cut-off connection reads as the end of the answer, perhaps a short one: an
            # answer is only trusted if it was complete before the deadline.
            if deadline.finish():
                raise DeadlineExceeded(f"no complete answer within {total_timeout} s")
            return answer
        except (DestinationNotAllowed, DeadlineExceeded):
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired:
                raise DeadlineExceeded(f"no answer within {total_timeout} s") from exc
            if isinstance(exc, requests.RequestException):
                raise
            # Reading the raw body raises urllib3's own errors, which requests does not wrap.
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise requests.ReadTimeout(str(exc)) from exc
            raise requests.ConnectionError(str(exc)) from exc


class PinnedAdapter(HTTPAdapter):
    """Connects to the address the policy checked, never to a fresh DNS answer."""

    def __init__(self, destinations: DestinationPolicy, **kwargs: Any) -> None:
        self.destinations = destinations
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {  # type: ignore[assignment]
            "http": _WatchedHTTPConnectionPool,
            "https": _WatchedHTTPSConnectionPool,
        }

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if proxies and any(proxies.values()):
            # A proxy would connect on our behalf, to an address we did not check.
            raise DestinationNotAllowed("proxy", request=request)
        return super().send(request, stream, timeout, verify, cert, proxies)

    def build_connection_pool_key_attributes(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        cert: str | tuple[str, str] | None = None,
    ) -> tuple[_HostParams, _PoolKwargs]:
        """Resolve and check the host (once per request), then key the pool on the checked
        address, with the host name for SNI and the certificate."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        assert request.url is not None
        try:
            destination = self.destinations.destination(request.url)
        except DestinationRefused as exc:
            raise DestinationNotAllowed(exc.code, request=request) from None
        except HostUnresolved:
            raise requests.ConnectionError("host name not resolved", request=request) from None
        # http.client would otherwise send the address as the Host.
        request.headers["Host"] = destination.host_header
        host_params["host"] = str(destination.address)
        if destination.scheme == "https":
            # Both are HTTPSConnectionPool arguments the stubs do not list.
            pool_kwargs["server_hostname"] = destination.host  # type: ignore[typeddict-unknown-key]  # SNI
            pool_kwargs["assert_hostname"] = destination.host  # type: ignore[typeddict-unknown-key]  # the certificate's name
        return host_params, pool_kwargs

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        # The deprecated path skips `build_connection_pool_key_attributes`: never unchecked.
        raise NotImplementedError("PinnedAdapter supports get_connection_with_tls_context only")


# ---- The total deadline -----------------------------------------------------------------------

_current = threading.local()


class _CutOff:
    """A duplicate of a connection's socket. Shutting it down ends any connect, TLS handshake
    or read blocked on the original (a TLS socket takes over the original socket object, so
    the connection's own object may be unusable from here)."""

    def __init__(self, sock: socket.socket) -> None:
        self._lock = threading.Lock()
        self._spare: socket.socket | None = sock.dup()

    def cut(self) -> None:
        with self._lock:
            if self._spare is not None:
                with contextlib.suppress(OSError):  # already closed by the peer
                    self._spare.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            if self._spare is not None:
                self._spare.close()
                self._spare = None


class _Deadline:
    """While active in this thread, cuts off every connection the request uses once
    `seconds` have passed (the process's watchdog thread calls `expire`)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[_CutOff] = []
        self.finished = False
        self.expired = False

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        _watchdog.add(self)
        return self

    def __exit__(self, *_: object) -> None:
        self.finish()
        _current.deadline = None

    def finish(self) -> bool:
        """Stop watching; whether the deadline had passed by then."""
        with self._lock:
            self.finished = True
            return self.expired

    def watch(self, cutoff: _CutOff) -> None:
        with self._lock:
            if self.expired:
                cutoff.cut()
            elif not self.finished and cutoff not in self._watched:
                self._watched.append(cutoff)

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            for cutoff in self._watched:
                cutoff.cut()


class _Watchdog:
    """One thread per process that expires deadlines when their time comes. (A timer thread
    per attempt would cost more to start than a fast delivery takes.)"""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []  # a heap, soonest first
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="callback-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._due, (deadline.at, next(self._count), deadline))
            if self._due[0][2] is deadline:  # sooner than it was sleeping for
                self._wake.notify()

    def _run(self) -> None:
        while True:
            expired: list[_Deadline] = []
            with self._wake:
                while not expired:
                    now = time.monotonic()
                    # Finished deadlines (nearly all) leave as they come to the top.
                    while self._due and (self._due[0][0] <= now or self._due[0][2].finished):
                        deadline = heapq.heappop(self._due)[2]
                        if not deadline.finished:
                            expired.append(deadline)
                    if not expired:
                        self._wake.wait(self._due[0][0] - now if self._due else None)
            for deadline in expired:
                deadline.expire()


_watchdog = _Watchdog()


def _new_watchdog_after_fork() -> None:
    # The parent's watchdog thread does not exist in a forked child, and its lock may have
    # been held at the fork.
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def _watch(cutoff: _CutOff | None) -> None:
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None and cutoff is not None:
        deadline.watch(cutoff)


class _Watched:
    """Puts a connection's socket under the current attempt's deadline (mixed into urllib3's
    HTTP and HTTPS connections, before them in the bases)."""

    _cutoff: _CutOff | None = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._cutoff = _CutOff(sock)
        _watch(self._cutoff)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self._cutoff)  # a kept-alive connection; a new one is watched in `_new_conn`
        super().request(*args, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            cutoff, self._cutoff = self._cutoff, None
            if cutoff is not None:
                cutoff.close()


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _ca_bundle_from_environment() -> bool | str:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
