"""The HTTP exchange with an S3 store: one bucket, one reused connection, signed requests.

What lives here is what must see the exchange itself (docs/s3.md, "Errors, retries, timeouts"):

- the classification of every failure into a :class:`~pgpush.storage.base.StorageError`
  (103), ``transient`` when a new try may help: connection refused or reset, a timeout,
  5xx but 501, 429 and the throttling codes (:func:`_retryable`); never other 4xx;
- one immediate re-send of a request whose *reused* keep-alive connection turns out closed
  by the server (it closes idle connections on its own schedule): that is the normal life of
  HTTP keep-alive, not a failure of the store, and only here is it known that the connection
  was reused and that no answer came.  The re-send is *ambiguous* (the first send may have
  reached the store), which the storage layer resolves with an ETag check where it matters
  (a conditional PUT answered 412, a Complete answered NoSuchUpload).

Everything else, backing off and trying again on a new connection, is the retry layer's
(:mod:`pgpush.storage.retry`), once for every backend.  ``timeout`` bounds the connect and
every socket read or write, so a frozen server gives an error, never a hang.  Credentials
never appear in a message (:meth:`S3Client.scrub`).

Not thread-safe: use one object per thread or process.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from pgpush.log import LOG
from pgpush.storage.base import StorageError
from pgpush.storage.s3.sigv4 import EMPTY_SHA256, Credentials, Signer, canonical_query, uri_encode

RETRY_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "ConditionalRequestConflict", "OperationAborted",
})
# Errors that say the repository as configured cannot be used at all.
REPO_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AllAccessDisabled",
    "InvalidBucketName", "AuthorizationHeaderMalformed", "ExpiredToken", "InvalidToken", "RequestTimeTooSkewed",
    "PermanentRedirect", "AccountProblem",
})
_STATUS_CODES = {  # error code for responses without a body (HEAD)
    400: "BadRequest", 401: "Unauthorized", 403: "AccessDenied", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 412: "PreconditionFailed", 429: "TooManyRequests", 500: "InternalError",
    501: "NotImplemented", 503: "ServiceUnavailable",
}


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_endpoint(text: str, default_port: int = 443) -> Endpoint:
    """``host``, ``host:port`` (HTTPS), ``http://host[:port]`` or ``https://host[:port]``.

    Without a port: ``repo1-storage-port`` (``default_port``), except that a
    plain ``http://`` URL with the default 443 uses 80.
    """
    raw = text.strip()
    url = raw if "://" in raw else f"https://{raw}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid endpoint: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("the scheme must be http or https")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("host, host:port, http://host:port or https://host:port is expected")
    if port is None:
        port = 80 if parts.scheme == "http" and default_port == 443 else default_port
    return Endpoint(parts.scheme, parts.hostname, port)


class S3Error(StorageError):
    """The store answered with an error status (``status``, S3 ``code``)."""

    def __init__(self, message: str, status: int, code: str, s3_message: str, transient: bool = False):
        super().__init__(message, transient)
        self.status = status
        self.s3_code = code
        self.s3_message = s3_message
        self.ambiguous = False  # a re-sent request: the first send may have taken effect


def _retryable(status: int, code: str) -> bool:
    """5xx (but 501 Not Implemented), 429 and the throttling/temporary codes."""
    return (status >= 500 and status != 501 and code != "NotImplemented") or status == 429 or code in RETRY_CODES


class ConnectionFailure(Exception):
    """One try failed below HTTP; ``sent``: the request may have reached the server."""

    def __init__(self, exc: BaseException, sent: bool, reused: bool):
        super().__init__(str(exc))
        self.exc = exc
        self.sent = sent
        self.reused = reused
        self.timeout = isinstance(exc, (socket.timeout, TimeoutError))


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    ambiguous: bool = False  # re-sent after a stale connection: the first send may have taken effect
    stream: http.client.HTTPResponse | None = None
    conn: http.client.HTTPConnection | None = None


def escape(text: str) -> str:
    """XML text escaping (xml.sax.saxutils would import urllib.request: 20 ms on the hot path)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def xml_children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def xml_text(elem: ET.Element, name: str, default: str = "") -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return default


def _error_fields(status: int, body: bytes) -> tuple[str, str]:
    code, message = _STATUS_CODES.get(status, f"HTTP{status}"), ""
    if body:
        try:
            root = parse_xml(body)
        except ET.ParseError:
            message = body[:200].decode("utf-8", "replace").strip()
        else:
            if _local(root.tag) == "Error":
                code = xml_text(root, "Code") or code
                message = xml_text(root, "Message")
    return code, message


class S3Client:
    """Signed requests to one bucket, over one reused connection (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, bucket: str, credentials: Credentials, region: str = "us-east-1",
                 uri_style: str = "host", verify_tls: bool = True, ca_file: str | None = None,
                 timeout: float = 30.0, connect_timeout: float | None = None, label: str = "repo1"):
        if uri_style not in ("host", "path"):
            raise ValueError(f"uri style must be host or path, not {uri_style!r}")
        self.endpoint = endpoint
        self.label = label  # repo1..repo4, for messages
        self.bucket = bucket
        self.region = region
        self.uri_style = uri_style
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._signer = Signer(credentials, region)
        self._secrets = [s for s in (credentials.key, credentials.secret, credentials.token) if s]
        self.host = f"{bucket}.{endpoint.host}" if uri_style == "host" else endpoint.host
        self.host_header = f"{bucket}.{endpoint.netloc}" if uri_style == "host" else endpoint.netloc
        self.description = f"s3://{bucket} at {endpoint.scheme}://{endpoint.netloc}"
        self._context: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._context = ctx
        self._idle: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        return f"S3Client({self.description})"

    # -- messages ------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def unreachable(self, reason: str, transient: bool = True) -> StorageError:
        return StorageError(self.scrub(f"unable to find a valid repository:\n{self.label}: {reason} ({self.description})"), transient)

    def failure_error(self, failure: ConnectionFailure, what: str) -> StorageError:
        exc = failure.exc
        if failure.timeout:
            return self.unreachable(f"timeout after {self.timeout:g}s waiting for the S3 server during {what}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self.unreachable(
                f"TLS certificate verification failed: {exc.verify_message or exc} (set {self.label}-storage-ca-file, "
                f"or {self.label}-storage-verify-tls=n for a test server)", transient=False)
        if isinstance(exc, socket.gaierror):
            return self.unreachable(f"unable to resolve host '{self.host}': {exc.strerror or exc}")
        if isinstance(exc, OSError) and exc.errno:
            return self.unreachable(f"[Errno {exc.errno}] {exc.strerror or exc} during {what}")
        return self.unreachable(f"connection lost during {what}: {exc or type(exc).__name__}")

    def _s3_error(self, status: int, body: bytes, what: str) -> S3Error:
        code, message = _error_fields(status, body)
        message = self.scrub(message)
        text = f"S3 error {status} {code}" + (f": {message}" if message else "")
        retryable = _retryable(status, code)
        if code in REPO_CODES or status in (401, 403):
            full = f"unable to find a valid repository:\n{self.label}: {what}: {text} ({self.description})"
        else:
            full = f"unable to {what}: {text} ({self.description})"
        return S3Error(self.scrub(full), status, code, message, transient=retryable)

    # -- connections ---------------------------------------------------------------------------

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.endpoint.port, timeout=self.connect_timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self.host, self.endpoint.port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.timeout)
        return conn

    def release(self, conn: http.client.HTTPConnection | None) -> None:
        """Give back a connection whose response has been read completely."""
        if conn is None:
            return
        if self._idle is None and conn.sock is not None:
            self._idle = conn
        else:
            conn.close()

    def close(self) -> None:
        if self._idle is not None:
            self._idle.close()
            self._idle = None

    # -- requests ------------------------------------------------------------------------------

    def path(self, key: str) -> str:
        if self.uri_style == "path":
            return f"/{self.bucket}/{uri_encode(key, slash=True)}" if key else f"/{self.bucket}"
        return f"/{uri_encode(key, slash=True)}"

    def _attempt(self, method: str, key: str, query: dict[str, str] | None, headers: dict[str, str] | None,
                 body: bytes | None, payload_sha256: str | None, stream: bool, error_in_body: bool, what: str) -> Response:
        path = self.path(key)
        qs = canonical_query(query)
        hdrs = {"host": self.host_header}
        if headers:
            hdrs.update({k.lower(): v for k, v in headers.items()})
        if payload_sha256 is None:
            payload_sha256 = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        self._signer.sign(method, path, qs, hdrs, payload_sha256)
        if body is not None or method in ("PUT", "POST"):
            hdrs["content-length"] = str(len(body or b""))
        conn, reused = self._idle, self._idle is not None
        self._idle = None
        sent = False
        try:
            if conn is None:
                conn = self._new_connection()
            sent = True
            conn.request(method, f"{path}?{qs}" if qs else path, body=body or None, headers=hdrs)
            resp = conn.getresponse()
            lower = {k.lower(): v for k, v in resp.getheaders()}
            if stream and 200 <= resp.status < 300:
                return Response(resp.status, lower, b"", stream=resp, conn=conn)
            data = resp.read()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if conn is not None:
                conn.close()
            raise ConnectionFailure(exc, sent, reused) from None
        if resp.will_close:
            conn.close()
        else:
            self.release(conn)
        if resp.status >= 300:
            raise self._s3_error(resp.status, data, what)
        if error_in_body and data:
            try:
                root = parse_xml(data)
            except ET.ParseError:
                root = None
            if root is not None and _local(root.tag) == "Error":
                raise self._s3_error(500, data, what)
        return Response(resp.status, lower, data)

    def request(self, method: str, key: str = "", query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None, *, what: str | None = None,
                payload_sha256: str | None = None, stream: bool = False, error_in_body: bool = False) -> Response:
        """One S3 request; an error status raises :class:`S3Error`, any other failure a StorageError.

        A request sent on a reused keep-alive connection that fails below HTTP (reset, closed,
        not a timeout: a server that closed an idle connection answers at once) is sent once
        more on a new connection, at once, and marked ``ambiguous`` (on the response or the
        error).  Nothing else is tried again here: the retry layer does it for every backend.

        ``stream``: a 2xx response is returned unread (``Response.stream``);
        read it to the end and :meth:`release` ``Response.conn``, or close it.
        ``error_in_body``: a 200 whose body is an ``<Error>`` is an error
        (CompleteMultipartUpload, CopyObject).
        """
        what = what or f"{method} '{key or self.bucket}'"
        ambiguous = resent = False
        while True:
            try:
                result = self._attempt(method, key, query, headers, body, payload_sha256, stream, error_in_body, what)
            except ConnectionFailure as failure:
                if failure.reused and not failure.timeout and not resent:
                    resent, ambiguous = True, failure.sent
                    LOG.debug(f"S3 {what}: the kept-alive connection was closed by the server "
                              f"({type(failure.exc).__name__}); sending again on a new one")
                    continue
                raise self.failure_error(failure, what) from None
            except S3Error as exc:
                exc.ambiguous = ambiguous
                raise
            result.ambiguous = ambiguous
            return result

    # -- bucket-level helpers (tests, setup) ---------------------------------------------------

    def create_bucket(self) -> None:
        body = None
        if self.region != "us-east-1":
            body = (f"<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                    f"<LocationConstraint>{escape(self.region)}</LocationConstraint></CreateBucketConfiguration>").encode()
        try:
            self.request("PUT", "", body=body, what=f"create bucket '{self.bucket}'")
        except S3Error as exc:
            if exc.s3_code not in ("BucketAlreadyOwnedByYou",):
                raise

    def delete_bucket(self) -> None:
        self.request("DELETE", "", what=f"delete bucket '{self.bucket}'")

