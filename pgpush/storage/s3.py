"""Repository in S3-compatible object storage (AWS S3, Ceph RGW, SeaweedFS, MinIO).

A small S3 client of our own on the standard library (``http.client``,
``ssl``, ``hmac``, ``hashlib``) rather than boto3/botocore: those add tens of
megabytes (35 MB for boto3 1.44 and its dependencies, far more with older
botocore releases) and ~0.4 s of imports to a single-file zipapp that is
copied onto every database host and started once per WAL segment, while the
subset of S3 we need is small: GET, PUT, HEAD, DELETE, ListObjectsV2,
DeleteObjects and multipart upload.  See docs/s3.md.

- Requests are signed with AWS Signature Version 4 (``Authorization`` header)
  including the SHA-256 of every payload (``x-amz-content-sha256``; never
  ``UNSIGNED-PAYLOAD``) and carry ``Content-MD5``, so the store refuses a body
  damaged in transit (``BadDigest``).
- Endpoints: ``host``, ``host:port`` (HTTPS, port ``repo1-storage-port``), or
  ``http://host[:port]`` / ``https://host[:port]``; path- or host-style bucket
  addressing (``repo1-s3-uri-style``).  TLS is verified unless
  ``repo1-storage-verify-tls=n``; ``repo1-storage-ca-file`` sets the CA bundle.
- One persistent connection is reused across requests and reopened when the
  server drops it.  ``timeout`` bounds the connect and every socket read or
  write, so a frozen server gives an error, never a hang.
- Names are keys below the prefix ``repo1-path``.  There are no temporary
  names: an S3 PUT is atomic and durable when it is acknowledged.
- ``put`` without ``overwrite`` is a conditional write (``If-None-Match: *``,
  412 → :class:`FileExistsError`); a store that rejects the header is detected
  once per storage object and handled with a HEAD before the PUT (racy, see
  docs/s3.md).  Objects larger than one part (16 MiB) go up as a multipart
  upload that is aborted on any failure; once completed, a HEAD checks that
  the object holds every byte sent (a single PUT is checked by the store
  itself through its Content-MD5).
- Transient failures (connection refused or reset, 5xx, 429, ``SlowDown``)
  are retried by one wrapper, :meth:`S3Client._retry`, with exponential
  backoff and jitter; a timeout is not retried (it has already waited the
  configured time) and nor is any other 4xx.  What is left is a
  :class:`~pgpush.storage.base.StorageError` (103), ``transient`` when a later
  retry may help.
- Credentials come from ``repo1-s3-key``/``repo1-s3-key-secret``, else from
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``; they
  never appear in a log line or an error message.

Not thread-safe: use one object per thread or process (the async workers are
processes).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import http.client
import os
import random
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

from pgpush.errors import OptionInvalidValueError, OptionRequiredError
from pgpush.fsutil import TMP_SUFFIX
from pgpush.log import LOG
from pgpush.storage.base import CHUNK, FileInfo, Storage, StorageError, check_name

PART_SIZE = 16 * 1024 * 1024  # objects up to this size go up in one PUT
TRIES = 4
BACKOFF_BASE = 0.1  # seconds before the 2nd try; x4 each time: 0.1, 0.4, 1.6
BACKOFF_FACTOR = 4.0
LIST_MAX = 1000  # keys per ListObjectsV2 page and per DeleteObjects request
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_RETRY_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "ConditionalRequestConflict", "OperationAborted",
})
# Errors that say the repository as configured cannot be used at all.
_REPO_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AllAccessDisabled",
    "InvalidBucketName", "AuthorizationHeaderMalformed", "ExpiredToken", "InvalidToken", "RequestTimeTooSkewed",
    "PermanentRedirect", "AccountProblem",
})
_STATUS_CODES = {  # error code for responses without a body (HEAD)
    400: "BadRequest", 401: "Unauthorized", 403: "AccessDenied", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 412: "PreconditionFailed", 429: "TooManyRequests", 500: "InternalError",
    501: "NotImplemented", 503: "ServiceUnavailable",
}


# -- configuration --------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Credentials:
    key: str = field(repr=False)
    secret: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, key: str | None, secret: str | None, environ=None) -> Credentials | None:
        """The options' key pair, else the AWS_* environment (the session token only with the latter)."""
        environ = os.environ if environ is None else environ
        if key and secret:
            return cls(key, secret)
        if key or secret:
            return None
        env_key, env_secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        if env_key and env_secret:
            return cls(env_key, env_secret, environ.get("AWS_SESSION_TOKEN") or None)
        return None


# -- signing --------------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def uri_encode(text: str, slash: bool = False) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but ``A-Za-z0-9-._~`` (and ``/`` in paths)."""
    return quote(text, safe="/~" if slash else "~")


class Signer:
    """AWS Signature Version 4 for the ``s3`` service, header form."""

    def __init__(self, credentials: Credentials, region: str):
        self.credentials = credentials
        self.region = region
        self._keys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Signer(region={self.region!r})"

    def _signing_key(self, datestamp: str) -> bytes:
        key = self._keys.get(datestamp)
        if key is None:
            key = _hmac(("AWS4" + self.credentials.secret).encode(), datestamp)
            for part in (self.region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._keys = {datestamp: key}
        return key

    def sign(self, method: str, path: str, query: str, headers: dict[str, str], payload_sha256: str,
             now: float | None = None) -> dict[str, str]:
        """Add ``x-amz-date``, ``x-amz-content-sha256``, the token and ``authorization`` to ``headers``.

        ``path`` is already URI-encoded; ``query`` is the canonical query string.
        Every header given is signed; header names must be lower case.
        """
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        datestamp = amz_date[:8]
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_sha256
        if self.credentials.token:
            headers["x-amz-security-token"] = self.credentials.token
        names = sorted(headers)
        canonical_headers = "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names)
        signed_headers = ";".join(names)
        canonical = "\n".join((method, path, query, canonical_headers, signed_headers, payload_sha256))
        scope = f"{datestamp}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(datestamp), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.credentials.key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}")
        return headers


def canonical_query(query: dict[str, str] | None) -> str:
    if not query:
        return ""
    return "&".join(f"{uri_encode(k)}={uri_encode(str(v))}" for k, v in sorted(query.items()))


# -- responses and errors -------------------------------------------------------------------------


class S3Error(StorageError):
    """The store answered with an error status (``status``, S3 ``code``)."""

    def __init__(self, message: str, status: int, code: str, s3_message: str, transient: bool = False):
        super().__init__(message, transient)
        self.status = status
        self.s3_code = code
        self.s3_message = s3_message
        self.ambiguous = False  # an earlier try of the same request may have taken effect

    @property
    def retryable(self) -> bool:
        return _retryable(self.status, self.s3_code)


def _retryable(status: int, code: str) -> bool:
    """5xx (but 501 Not Implemented), 429 and the throttling/temporary codes."""
    return (status >= 500 and status != 501 and code != "NotImplemented") or status == 429 or code in _RETRY_CODES


class _ConnectionFailure(Exception):
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
    ambiguous: bool = False  # an earlier try failed after the request may have reached the server
    stream: http.client.HTTPResponse | None = None
    conn: http.client.HTTPConnection | None = None


def escape(text: str) -> str:
    """XML text escaping (xml.sax.saxutils would import urllib.request: 20 ms on the hot path)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _text(elem: ET.Element, name: str, default: str = "") -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return default


def _error_fields(status: int, body: bytes) -> tuple[str, str]:
    code, message = _STATUS_CODES.get(status, f"HTTP{status}"), ""
    if body:
        try:
            root = _xml(body)
        except ET.ParseError:
            message = body[:200].decode("utf-8", "replace").strip()
        else:
            if _local(root.tag) == "Error":
                code = _text(root, "Code") or code
                message = _text(root, "Message")
    return code, message


# -- the client -----------------------------------------------------------------------------------


class S3Client:
    """Signed requests to one bucket, over one reused connection, with retries."""

    def __init__(self, endpoint: Endpoint, bucket: str, credentials: Credentials, region: str = "us-east-1",
                 uri_style: str = "host", verify_tls: bool = True, ca_file: str | None = None,
                 timeout: float = 30.0, connect_timeout: float | None = None, tries: int = TRIES):
        if uri_style not in ("host", "path"):
            raise ValueError(f"uri style must be host or path, not {uri_style!r}")
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.uri_style = uri_style
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.tries = max(1, tries)
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
        self.sleep = time.sleep  # tests may replace it

    def __repr__(self) -> str:
        return f"S3Client({self.description})"

    # -- messages ------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def unreachable(self, reason: str, transient: bool = True) -> StorageError:
        return StorageError(self.scrub(f"unable to find a valid repository:\nrepo1: {reason} ({self.description})"), transient)

    def _failure_error(self, failure: _ConnectionFailure, what: str) -> StorageError:
        exc = failure.exc
        if failure.timeout:
            return self.unreachable(f"timeout after {self.timeout:g}s waiting for the S3 server during {what}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self.unreachable(
                f"TLS certificate verification failed: {exc.verify_message or exc} (set repo1-storage-ca-file, "
                "or repo1-storage-verify-tls=n for a test server)", transient=False)
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
        if code in _REPO_CODES or status in (401, 403):
            full = f"unable to find a valid repository:\nrepo1: {what}: {text} ({self.description})"
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
            raise _ConnectionFailure(exc, sent, reused) from None
        if resp.will_close:
            conn.close()
        else:
            self.release(conn)
        if resp.status >= 300:
            raise self._s3_error(resp.status, data, what)
        if error_in_body and data:
            try:
                root = _xml(data)
            except ET.ParseError:
                root = None
            if root is not None and _local(root.tag) == "Error":
                raise self._s3_error(500, data, what)
        return Response(resp.status, lower, data)

    def _retry(self, attempt: Callable[[], Response], what: str) -> Response:
        """Run ``attempt`` up to ``tries`` times, sleeping 0.1, 0.4, 1.6 s (with jitter) between.

        Retried: connection errors other than timeouts (immediately when a reused
        keep-alive connection had gone stale), 5xx, 429 and the throttling codes.
        Connection errors are not retried past ``timeout`` seconds in all.
        """
        start = time.monotonic()
        ambiguous = False
        for n in range(1, self.tries + 1):
            try:
                result = attempt()
            except _ConnectionFailure as failure:
                error = self._failure_error(failure, what)
                if failure.timeout or n == self.tries or not error.transient:
                    raise error from None
                ambiguous = ambiguous or failure.sent
                delay = 0.0 if failure.reused and n == 1 else self._backoff(n)
                if time.monotonic() - start + delay > self.timeout:
                    raise error from None
                LOG.debug(f"S3 {what}: {error}; retrying in {delay:.2f}s")
            except S3Error as exc:
                exc.ambiguous = ambiguous
                if not exc.retryable or n == self.tries:
                    raise
                ambiguous = True
                delay = self._backoff(n)
                LOG.debug(f"S3 {what}: {exc}; retrying in {delay:.2f}s")
            else:
                result.ambiguous = ambiguous
                return result
            if delay:
                self.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _backoff(n: int) -> float:
        delay = BACKOFF_BASE * BACKOFF_FACTOR ** (n - 1)
        return random.uniform(delay / 2, delay)

    def request(self, method: str, key: str = "", query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None, *, what: str | None = None,
                payload_sha256: str | None = None, stream: bool = False, error_in_body: bool = False) -> Response:
        """One S3 request, retried; an error status raises :class:`S3Error`.

        ``stream``: a 2xx response is returned unread (``Response.stream``);
        read it to the end and :meth:`release` ``Response.conn``, or close it.
        ``error_in_body``: a 200 whose body is an ``<Error>`` is an error
        (CompleteMultipartUpload, CopyObject).
        """
        what = what or f"{method} '{key or self.bucket}'"
        return self._retry(
            lambda: self._attempt(method, key, query, headers, body, payload_sha256, stream, error_in_body, what), what)

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


def _iso_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _http_time(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


def _md5_b64(data: bytes) -> tuple[str, bytes]:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode(), digest


def _etag(headers: dict[str, str]) -> str:
    return headers.get("etag", "").strip('"')


def _exists(name: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "file exists", name)


def _conditional_rejected(exc: S3Error) -> bool:
    """The store does not implement ``If-None-Match`` (as opposed to: the object exists)."""
    if exc.status == 501 or exc.s3_code == "NotImplemented":
        return True
    text = exc.s3_message.lower()
    return exc.status == 400 and ("if-none-match" in text or "conditional" in text)


# -- the storage ----------------------------------------------------------------------------------


class S3Storage(Storage):
    def __init__(self, endpoint: str | Endpoint, bucket: str, prefix: str = "", *, key: str | None = None,
                 secret: str | None = None, region: str = "us-east-1", uri_style: str = "host", port: int = 443,
                 verify_tls: bool = True, ca_file: str | None = None, timeout: float = 30.0,
                 connect_timeout: float | None = None, part_size: int = PART_SIZE, tries: int = TRIES):
        if not isinstance(endpoint, Endpoint):
            endpoint = parse_endpoint(endpoint, port)
        credentials = Credentials.resolve(key, secret)
        if credentials is None:
            raise OptionRequiredError(
                "s3 repository requires options repo1-s3-key and repo1-s3-key-secret "
                "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)")
        if part_size < 5 * 1024 * 1024:
            raise ValueError("part size must be at least 5 MiB (the S3 minimum)")
        self.client = S3Client(endpoint, bucket, credentials, region=region, uri_style=uri_style,
                               verify_tls=verify_tls, ca_file=ca_file, timeout=timeout,
                               connect_timeout=connect_timeout, tries=tries)
        stripped = prefix.strip("/")
        self.prefix = f"{stripped}/" if stripped else ""
        self.part_size = part_size
        self.description = f"{self.client.description}/{self.prefix}"
        # Whether the store implements If-None-Match on PUT / CompleteMultipartUpload (None: not known yet).
        self.conditional_put: bool | None = None
        self.conditional_complete: bool | None = None

    @classmethod
    def from_config(cls, cfg) -> S3Storage:
        port = int(cfg["repo1-storage-port"])
        raw = cfg.require("repo1-s3-endpoint")
        try:
            endpoint = parse_endpoint(str(raw), port)
        except ValueError as exc:
            where = getattr(cfg, "sources", {}).get("repo1-s3-endpoint", "")
            raise OptionInvalidValueError(
                f"option 'repo1-s3-endpoint' has invalid value '{raw}'{' ' + where if where else ''}: {exc}") from None
        key, secret = cfg.get("repo1-s3-key"), cfg.get("repo1-s3-key-secret")
        if bool(key) != bool(secret):
            missing = "repo1-s3-key-secret" if key else "repo1-s3-key"
            raise OptionRequiredError(f"{cfg.command} command requires option: {missing}")
        if not key and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
            raise OptionRequiredError(
                f"{cfg.command} command requires option: repo1-s3-key "
                "(and repo1-s3-key-secret; or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)")
        return cls(
            endpoint, str(cfg.require("repo1-s3-bucket")), str(cfg["repo1-path"]),
            key=key, secret=secret, region=str(cfg["repo1-s3-region"]), uri_style=str(cfg["repo1-s3-uri-style"]),
            verify_tls=bool(cfg["repo1-storage-verify-tls"]), ca_file=cfg.get("repo1-storage-ca-file"),
            timeout=float(cfg["repo1-host-timeout"]),
        )

    def close(self) -> None:
        self.client.close()

    # -- names ---------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _dir_prefix(self, directory: str) -> str:
        return self.prefix if directory in ("", ".") else f"{self.prefix}{check_name(directory)}/"

    # -- listing -------------------------------------------------------------------------------

    def _list_pages(self, prefix: str, delimiter: str | None, what: str) -> Iterator[ET.Element]:
        token = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(LIST_MAX)}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            resp = self.client.request("GET", "", query=query, what=what)
            try:
                root = _xml(resp.body)
            except ET.ParseError as exc:
                raise StorageError(f"unable to {what}: malformed ListObjectsV2 response: {exc} ({self.description})",
                                   transient=True) from None
            yield root
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated").lower() != "true" or not token:
                return

    def list(self, directory: str) -> list[FileInfo]:
        prefix = self._dir_prefix(directory)
        out = []
        for page in self._list_pages(prefix, "/", f"list '{directory}'"):
            for item in _children(page, "Contents"):
                name = _text(item, "Key")[len(prefix):]
                if name and "/" not in name and TMP_SUFFIX not in name:
                    out.append(FileInfo(name, int(_text(item, "Size", "0") or 0), _iso_time(_text(item, "LastModified"))))
        return out

    def list_dirs(self, directory: str) -> list[str]:
        prefix = self._dir_prefix(directory)
        out = []
        for page in self._list_pages(prefix, "/", f"list '{directory}'"):
            for item in _children(page, "CommonPrefixes"):
                name = _text(item, "Prefix")[len(prefix):].rstrip("/")
                if name and "/" not in name:
                    out.append(name)
        return out

    def info(self, name: str) -> FileInfo | None:
        key = self._key(name)
        try:
            resp = self.client.request("HEAD", key, what=f"stat '{name}'")
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise
        return FileInfo(name.rsplit("/", 1)[-1], int(resp.headers.get("content-length", "0")),
                        _http_time(resp.headers.get("last-modified", "")))

    def incomplete_uploads(self, directory: str = "") -> list[tuple[str, str]]:
        """(name, upload id) of the multipart uploads begun and neither completed nor aborted below ``directory``."""
        prefix = self._dir_prefix(directory)
        out: list[tuple[str, str]] = []
        query = {"uploads": "", "prefix": prefix}
        while True:
            resp = self.client.request("GET", "", query=dict(query), what=f"list uploads in '{directory}'")
            root = _xml(resp.body)
            for item in _children(root, "Upload"):
                out.append((_text(item, "Key")[len(self.prefix):], _text(item, "UploadId")))
            if _text(root, "IsTruncated").lower() != "true":
                return out
            query["key-marker"] = _text(root, "NextKeyMarker")
            query["upload-id-marker"] = _text(root, "NextUploadIdMarker")

    # -- writing -------------------------------------------------------------------------------

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        key = self._key(name)
        it = iter(chunks)
        buf = bytearray()
        for chunk in it:
            buf += chunk
            if len(buf) > self.part_size:
                return self._put_multipart(name, key, buf, it, overwrite)
        self._put_single(name, key, buf, overwrite)  # no bytes() copy: 16 MiB less at the peak
        return len(buf)

    def _put_single(self, name: str, key: str, data: bytes | bytearray, overwrite: bool) -> None:
        md5_b64, md5 = _md5_b64(data)
        headers = {"content-md5": md5_b64, "content-type": "application/octet-stream"}
        conditional = not overwrite and self.conditional_put is not False
        if not overwrite and not conditional and self.info(name) is not None:
            raise _exists(name)
        if conditional:
            headers["if-none-match"] = "*"
        try:
            self.client.request("PUT", key, headers=headers, body=data, what=f"write '{name}'")
        except S3Error as exc:
            if conditional and exc.status == 412:
                if exc.ambiguous and self._is_ours(key, md5.hex()):
                    return  # an earlier try whose answer was lost wrote it
                self.conditional_put = True
                raise _exists(name) from None
            if conditional and _conditional_rejected(exc):
                LOG.detail(f"S3 store rejects If-None-Match on PUT ({exc.s3_code}): checking with HEAD before writing")
                self.conditional_put = False
                self._put_single(name, key, data, overwrite)
                return
            raise
        if conditional:
            self.conditional_put = True

    def _is_ours(self, key: str, etag: str) -> bool:
        """After an ambiguous retry: is the object there the one we sent (same ETag)?"""
        try:
            resp = self.client.request("HEAD", key)
        except S3Error:
            return False
        return _etag(resp.headers) == etag

    def _put_multipart(self, name: str, key: str, buf: bytearray, it: Iterator[bytes], overwrite: bool) -> int:
        if not overwrite and self.info(name) is not None:  # fail early; the Complete below is conditional too
            raise _exists(name)
        resp = self.client.request("POST", key, query={"uploads": ""}, headers={"content-type": "application/octet-stream"},
                                   what=f"start multipart upload of '{name}'")
        upload_id = _text(_xml(resp.body), "UploadId")
        if not upload_id:
            raise StorageError(f"unable to write '{name}': no UploadId in the answer ({self.description})", transient=True)
        parts: list[tuple[int, str]] = []
        digests: list[bytes] = []
        total = 0
        try:
            done = False
            while True:
                while len(buf) > self.part_size or (done and buf):
                    part = bytes(buf[:self.part_size])
                    del buf[:self.part_size]
                    md5_b64, md5 = _md5_b64(part)
                    number = len(parts) + 1
                    resp = self.client.request(
                        "PUT", key, query={"partNumber": str(number), "uploadId": upload_id},
                        headers={"content-md5": md5_b64}, body=part, what=f"write part {number} of '{name}'")
                    parts.append((number, _etag(resp.headers) or md5.hex()))
                    digests.append(md5)
                    total += len(part)
                if done:
                    break
                try:
                    buf += next(it)
                except StopIteration:
                    done = True
            self._complete(name, key, upload_id, parts, digests, overwrite)
        except BaseException:
            self._abort(name, key, upload_id)
            raise
        self._check_stored_size(name, total)
        return total

    def _check_stored_size(self, name: str, sent: int) -> None:
        """A completed multipart object must hold every byte sent; one HEAD per large file.

        Each part carried its Content-MD5, but which parts make the object is the store's
        bookkeeping: a wrong size is removed, so nothing short stays under the name."""
        info = self.info(name)
        stored = info.size if info is not None else 0
        if stored != sent:
            if info is not None:
                self.delete(name)
            raise StorageError(f"unable to write '{name}': the store holds {stored} bytes of the {sent} sent "
                               f"({self.description})")

    def _complete(self, name: str, key: str, upload_id: str, parts: list[tuple[int, str]], digests: list[bytes],
                  overwrite: bool) -> None:
        body = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>\"{escape(etag)}\"</ETag></Part>" for n, etag in parts)
            + "</CompleteMultipartUpload>").encode()
        expected = f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(parts)}"
        headers = {"content-md5": _md5_b64(body)[0], "content-type": "application/xml"}
        conditional = not overwrite and self.conditional_complete is not False
        if conditional:
            headers["if-none-match"] = "*"
        try:
            self.client.request("POST", key, query={"uploadId": upload_id}, headers=headers, body=body,
                                what=f"complete multipart upload of '{name}'", error_in_body=True)
        except S3Error as exc:
            if exc.ambiguous and exc.s3_code in ("NoSuchUpload", "PreconditionFailed") and self._is_ours(key, expected):
                return  # an earlier try completed it and its answer was lost
            if conditional and exc.status == 412:
                self.conditional_complete = True
                raise _exists(name) from None
            if conditional and _conditional_rejected(exc):
                LOG.detail(f"S3 store rejects If-None-Match on CompleteMultipartUpload ({exc.s3_code}): relying on HEAD")
                self.conditional_complete = False
                self._complete(name, key, upload_id, parts, digests, overwrite)
                return
            raise
        if conditional:
            self.conditional_complete = True

    def _abort(self, name: str, key: str, upload_id: str) -> None:
        try:
            self.client.request("DELETE", key, query={"uploadId": upload_id}, what=f"abort multipart upload of '{name}'")
        except S3Error as exc:
            if exc.status != 404:
                LOG.warn(f"unable to abort multipart upload of '{name}' (upload id {upload_id}): {exc}")
        except StorageError as exc:
            LOG.warn(f"unable to abort multipart upload of '{name}' (upload id {upload_id}): {exc}")

    # -- reading -------------------------------------------------------------------------------

    def read_chunks(self, name: str) -> Iterator[bytes]:
        key = self._key(name)
        what = f"read '{name}'"
        try:
            resp = self.client.request("GET", key, what=what, stream=True)
        except S3Error as exc:
            if exc.status == 404 and exc.s3_code != "NoSuchBucket":
                raise FileNotFoundError(errno.ENOENT, "no such file in the repository", name) from None
            raise
        stream, conn = resp.stream, resp.conn
        assert stream is not None and conn is not None
        expected = resp.headers.get("content-length")
        received = 0
        finished = False
        try:
            while True:
                try:
                    chunk = stream.read(CHUNK)
                except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                    failure = _ConnectionFailure(exc, True, False)
                    raise self.client._failure_error(failure, what) from None
                if not chunk:
                    break
                received += len(chunk)
                yield chunk
            if expected is not None and received != int(expected):
                raise self.client.unreachable(f"connection lost during {what}: got {received} of {expected} bytes")
            finished = True
        finally:
            if finished and not stream.will_close:
                self.client.release(conn)
            else:
                conn.close()

    # -- deleting ------------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        try:
            self.client.request("DELETE", self._key(name), what=f"delete '{name}'")
        except S3Error as exc:
            if exc.status != 404 or exc.s3_code == "NoSuchBucket":
                raise

    def delete_tree(self, directory: str) -> None:
        """Delete every key below ``directory/``, then the directory markers ``dir/``, deepest first.

        The markers matter on stores with real directories (SeaweedFS): they go on
        listing an emptied directory as a common prefix until a background cleaner
        runs, unless it is deleted explicitly (which never removes a non-empty one).
        Elsewhere a missing key is simply reported deleted.
        """
        prefix = f"{self.prefix}{check_name(directory)}/"
        keys: list[str] = []
        dirs = {prefix}
        for page in self._list_pages(prefix, None, f"list '{directory}'"):
            for item in _children(page, "Contents"):
                key = _text(item, "Key")
                keys.append(key)
                parts = key[len(prefix):].split("/")[:-1]
                dirs.update(prefix + "/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
        keys += sorted(dirs - set(keys), key=lambda d: (-d.count("/"), d))
        for i in range(0, len(keys), LIST_MAX):
            self._delete_keys(keys[i:i + LIST_MAX], directory)

    def _delete_keys(self, keys: list[str], directory: str) -> None:
        body = ("<Delete><Quiet>true</Quiet>" + "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys)
                + "</Delete>").encode()
        what = f"delete '{directory}'"
        try:
            resp = self.client.request("POST", "", query={"delete": ""}, body=body, what=what,
                                       headers={"content-md5": _md5_b64(body)[0], "content-type": "application/xml"})
        except S3Error as exc:
            if exc.status not in (400, 405, 501) or exc.s3_code in _REPO_CODES:
                raise
            for key in keys:  # a store without DeleteObjects
                self.client.request("DELETE", key, what=what)
            return
        root = _xml(resp.body) if resp.body else None
        errors = _children(root, "Error") if root is not None else []
        if errors:
            first = errors[0]
            raise StorageError(self.client.scrub(
                f"unable to {what}: {len(errors)} objects not deleted, e.g. '{_text(first, 'Key')}': "
                f"{_text(first, 'Code')} {_text(first, 'Message')} ({self.description})"))
