"""A fault-injecting HTTP proxy for the S3 tests: it stands in front of the moto server and makes
chosen requests fail the ways S3 and networks fail, and it records every request it saw.

Rules are set at run time (`FaultProxy.set_rules`): which requests (method, S3 operation, bucket,
key pattern), how often (a rate drawn from a seeded random generator) and how (a list of fault
kinds used in turn, so that a handful of faults already mixes them):

- ``500``, ``503``: an `InternalError` / `ServiceUnavailable` error response; the request is not
  forwarded.
- ``slowdown``: 503 with S3's `SlowDown` XML error body; not forwarded.
- ``reset``: the connection is reset (TCP RST) before any response; not forwarded.
- ``cut``: the request is forwarded (it takes effect), then the connection is closed halfway
  through the response (through its status line when it has no body).
- ``timeout``: no answer until the client gives up on its read timeout; not forwarded.
- ``latency``: the request is forwarded after `FaultRule.latency` seconds (a fault only if that
  is longer than the client's read timeout).
"""

from __future__ import annotations

import http.client
import itertools
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_KINDS = ("500", "503", "slowdown", "reset", "cut", "timeout", "latency")
# Kinds that fail the request (latency only slows it down).
FAILING_KINDS = frozenset(FAULT_KINDS) - {"latency"}
_ERRORS = {
    "500": (500, "Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": (503, "Service Unavailable", "ServiceUnavailable",
            "Service is unable to handle request."),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-connection", "expect"})
# How long a `timeout` fault holds a connection whose client never gives up.
_HOLD_LIMIT = 30.0


@dataclass(frozen=True)
class FaultRule:
    """Which requests to disturb, how often, and how."""

    kinds: Sequence[str]
    rate: float = 1.0
    methods: Collection[str] = ()  # empty: any method
    operations: Collection[str] = ()  # S3 operation names (see `s3_operation`); empty: any
    bucket: str | None = None
    key: str | None = None  # a regular expression searched in the object key
    query: str | None = None  # a regular expression searched in the query string
    limit: int | None = None  # faults this rule injects at most
    per_key_limit: int | None = None  # faults per object key at most (transient faults end)
    latency: float = 0.0  # seconds a `latency` fault adds

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {self.kinds}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {self.rate}")

    def matches(self, exchange: Exchange) -> bool:
        """Whether a request is one this rule may disturb."""
        return ((not self.methods or exchange.method in self.methods)
                and (not self.operations or exchange.operation in self.operations)
                and (self.bucket is None or exchange.bucket == self.bucket)
                and (self.key is None or re.search(self.key, exchange.key) is not None)
                and (self.query is None or re.search(self.query, exchange.query) is not None))


@dataclass
class Exchange:
    """One request the proxy received, and what it did to it."""

    method: str
    operation: str
    bucket: str
    key: str
    query: str = ""
    range: str | None = None  # the Range header of a ranged GET
    fault: str | None = None
    status: int | None = None  # the status the client was sent, if any


@dataclass
class _RuleState:
    rule: FaultRule
    kinds: Iterator[str]
    injected: int = 0
    per_key: Counter[str] = field(default_factory=Counter)


def s3_operation(method: str, key: str, query: dict[str, list[str]],
                 headers: http.client.HTTPMessage | None = None) -> str:
    """The S3 API operation of a path-style request."""
    if not key:
        return {
            "GET": "ListObjectsV2" if "list-type" in query
            else "ListMultipartUploads" if "uploads" in query else "ListObjects",
            "HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket",
        }.get(method, method)
    if method == "GET":
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        copying = headers is not None and "x-amz-copy-source" in headers
        return "CopyObject" if copying else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in query else "PostObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


class FaultProxy:
    """A threaded HTTP proxy in front of `upstream` (an S3 endpoint such as moto's server)."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[_RuleState] = []
        self._log: list[Exchange] = []
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The endpoint URL clients use instead of the upstream's."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        """Start serving (in a thread of its own)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held connections are let go."""
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def set_rules(self, *rules: FaultRule) -> None:
        """Disturb requests by these rules from now on (the first rule that matches decides)."""
        with self._lock:
            self._rules = [_RuleState(rule, itertools.cycle(rule.kinds)) for rule in rules]

    def clear(self) -> None:
        """No more faults, and forget the requests seen so far."""
        with self._lock:
            self._rules = []
            self._log = []

    def clear_log(self) -> None:
        """Forget the requests seen so far (the rules and their counts stay)."""
        with self._lock:
            self._log = []

    def seen(self, *, method: str | None = None, operation: str | None = None,
             bucket: str | None = None, key: str | None = None) -> list[Exchange]:
        """The requests received so far that match every filter given."""
        with self._lock:
            log = list(self._log)
        return [e for e in log
                if (method is None or e.method == method)
                and (operation is None or e.operation == operation)
                and (bucket is None or e.bucket == bucket)
                and (key is None or e.key == key)]

    def injected(self, **filters: str) -> Counter[str]:
        """Faults injected so far, by kind, into the requests that match the filters."""
        return Counter(e.fault for e in self.seen(**filters) if e.fault is not None)

    def failures(self, **filters: str) -> int:
        """Requests that matched the filters and that the proxy made fail."""
        return sum(n for kind, n in self.injected(**filters).items() if kind in FAILING_KINDS)

    def _decide(self, exchange: Exchange) -> FaultRule | None:
        with self._lock:
            self._log.append(exchange)
            for state in self._rules:
                if not state.rule.matches(exchange):
                    continue
                rule = state.rule
                if rule.limit is not None and state.injected >= rule.limit:
                    return None
                if (rule.per_key_limit is not None
                        and state.per_key[exchange.key] >= rule.per_key_limit):
                    return None
                if self._random.random() >= rule.rate:
                    return None
                state.injected += 1
                state.per_key[exchange.key] += 1
                exchange.fault = next(state.kinds)
                return rule
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        parts = urlsplit(self.path)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query, keep_blank_values=True)
        exchange = Exchange(self.command, s3_operation(self.command, key, query, self.headers),
                            bucket, key, parts.query, self.headers.get("Range"))
        rule = proxy._decide(exchange)
        kind = exchange.fault
        if kind in _ERRORS:
            status, reason, code, message = _ERRORS[kind]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><Resource>{parts.path}</Resource>"
                       "<RequestId>fault-proxy</RequestId></Error>").encode()
            exchange.status = status
            self._send(status, reason, [("Content-Type", "application/xml")], payload)
            return
        if kind == "reset":
            self._reset()
            return
        if kind == "timeout":
            self._hold()
            return
        if kind == "latency":
            assert rule is not None
            time.sleep(rule.latency)
        status, reason, headers, payload = self._forward(body)
        if kind == "cut":
            # A close, not a reset: the client reads what was sent before it finds the end.
            self._send(status, reason, headers, payload, cut=True)
            self.close_connection = True
            return
        exchange.status = status
        self._send(status, reason, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            connection.putrequest(self.command, self.path, skip_host=True,
                                  skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            headers = [(name, value) for name, value in response.getheaders()
                       if name.lower() not in _HOP_BY_HOP
                       and (self.command == "HEAD" or name.lower() != "content-length")]
            return response.status, response.reason, headers, payload
        finally:
            connection.close()

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes,
              *, cut: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{n}: {v}" for n, v in headers)]
        if self.command != "HEAD":
            lines.append(f"Content-Length: {len(payload)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        data = head + (b"" if self.command == "HEAD" else payload)
        if cut:
            # Halfway through the body; without a body, within the status line (a client takes
            # a head that ends early for a whole one).
            data = data[:len(head) + len(payload) // 2] if len(data) > len(head) \
                else data[:len(lines[0]) // 2]
        self.wfile.write(data)

    def _reset(self) -> None:
        """Close the connection with a TCP reset instead of an orderly shutdown."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _hold(self) -> None:
        """Say nothing until the client hangs up (its read timeout) or the proxy stops."""
        self.close_connection = True
        deadline = time.monotonic() + _HOLD_LIMIT
        stopped = self.server.proxy._stopped
        while not stopped.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                return
