"""The S3 backend beyond the shared contract: signing, endpoints, options, retries (the retry
layer over S3's transient answers, and the client's one re-send on a stale keep-alive
connection), the If-None-Match fallback, TLS and error messages.

Most of it runs against a scripted HTTP stub (so failures can be injected exactly); what a real
store must say (bad credentials, missing bucket, damaged body) runs against SeaweedFS.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import hashlib
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pgpush.config import load
from pgpush.errors import OptionInvalidValueError, OptionRequiredError
from pgpush.storage import open_storage
from pgpush.storage.base import StorageError
from pgpush.storage.retry import Policy, RetryingStorage
from pgpush.storage.s3.client import Endpoint, S3Client, S3Error, parse_endpoint
from pgpush.storage.s3.sigv4 import EMPTY_SHA256, Credentials, Signer
from pgpush.storage.s3.storage import S3Storage

MiB = 1024 * 1024
KEY, SECRET = "AKIDSTUBKEY123", "stub/secret+value=42"

# ---------------------------------------------------------------------------------------------
# a scripted S3 stub


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1] if "?" in self.path else ""


Reply = tuple[int, dict[str, str], bytes] | str  # or "drop": close the connection without answering


class Stub:
    """HTTP/1.1 server on 127.0.0.1 answering each request with ``handler(req)``."""

    def __init__(self, handler: Callable[[Req], Reply], tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.requests: list[Req] = []
        self.connections = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                stub.connections += 1
                super().setup()

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Req(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                stub.requests.append(req)
                reply = stub.handler(req)
                if reply == "drop":
                    self.close_connection = True
                    return
                status, headers, data = reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k in headers):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def storage(self, scheme: str = "http", **kw) -> S3Storage:
        kw.setdefault("timeout", 5)
        return S3Storage(f"{scheme}://127.0.0.1:{self.port}", "bkt", "repo", key=KEY, secret=SECRET, uri_style="path", **kw)

    def retrying(self, budget: float = 30.0, **kw) -> RetryingStorage:
        """The backend inside the retry layer, as open_storage makes it, on a clock of its own:
        each wait is recorded in ``sleeps`` and moves that clock on, nothing really waits."""
        clock = [0.0]

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            clock[0] += seconds

        return RetryingStorage(self.storage(**kw), Policy(budget, sleep=sleep, clock=lambda: clock[0]))

    def methods(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


sleeps: list[float] = []


def xml_error(status: int, code: str, message: str = "") -> tuple[int, dict[str, str], bytes]:
    body = f"<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return status, {"Content-Type": "application/xml"}, body


def ok(body: bytes = b"", **headers: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {k.replace("_", "-"): v for k, v in headers.items()}, body


EMPTY_LIST = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"


@pytest.fixture
def stub_factory():
    made: list[Stub] = []
    sleeps.clear()

    def make(handler: Callable[[Req], Reply], tls: ssl.SSLContext | None = None) -> Stub:
        stub = Stub(handler, tls)
        made.append(stub)
        return stub

    yield make
    for stub in made:
        stub.close()


# ---------------------------------------------------------------------------------------------
# signing, endpoints, options


def test_sigv4_matches_aws_documented_examples() -> None:
    signer = Signer(Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), "us-east-1")
    now = calendar.timegm(time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
    host = "examplebucket.s3.amazonaws.com"
    get = signer.sign("GET", "/test.txt", "", {"host": host, "range": "bytes=0-9"}, EMPTY_SHA256, now=now)
    assert get["authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    put = signer.sign("PUT", "/test%24file.text", "",
                      {"host": host, "date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
                      hashlib.sha256(b"Welcome to Amazon S3.").hexdigest(), now=now)
    assert put["authorization"].endswith("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    lst = signer.sign("GET", "/", "max-keys=2&prefix=J", {"host": host}, EMPTY_SHA256, now=now)
    assert lst["authorization"].endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    assert "wJalr" not in repr(signer) and "wJalr" not in repr(signer.credentials)


@pytest.mark.parametrize("text,port,expected", [
    ("s3.example.com", 443, Endpoint("https", "s3.example.com", 443)),
    ("s3.example.com", 9443, Endpoint("https", "s3.example.com", 9443)),
    ("s3.example.com:9000", 443, Endpoint("https", "s3.example.com", 9000)),
    ("http://127.0.0.1:8333", 443, Endpoint("http", "127.0.0.1", 8333)),
    ("http://minio", 443, Endpoint("http", "minio", 80)),
    ("http://minio", 9000, Endpoint("http", "minio", 9000)),
    ("https://s3.example.com/", 443, Endpoint("https", "s3.example.com", 443)),
    ("[::1]:9000", 443, Endpoint("https", "::1", 9000)),
])
def test_parse_endpoint(text: str, port: int, expected: Endpoint) -> None:
    assert parse_endpoint(text, port) == expected


@pytest.mark.parametrize("text", ["ftp://host", "http://host/path", "https://user:pw@host", "host:notaport", "http://"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_addressing_styles() -> None:
    creds = Credentials("k", "s")
    host = S3Client(Endpoint("https", "s3.example.com", 443), "bkt", creds, uri_style="host")
    assert (host.host, host.host_header, host.path("a/b c")) == ("bkt.s3.example.com", "bkt.s3.example.com", "/a/b%20c")
    path = S3Client(Endpoint("http", "127.0.0.1", 8333), "bkt", creds, uri_style="path")
    assert (path.host, path.host_header, path.path("a/b"), path.path("")) == ("127.0.0.1", "127.0.0.1:8333", "/bkt/a/b", "/bkt")


EMPTY_CONFIG = Path(__file__).with_name("empty.conf")  # a config file with no option in it


def _cfg(env: dict[str, str]):
    base = {"PGPUSH_REPO1_TYPE": "s3", "PGPUSH_REPO1_S3_BUCKET": "bkt", "PGPUSH_REPO1_S3_ENDPOINT": "s3.example.com"}
    return load(["info", f"--config={EMPTY_CONFIG}"], environ={**base, **env})


def test_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    st = open_storage(_cfg({"PGPUSH_REPO1_S3_KEY": "k", "PGPUSH_REPO1_S3_KEY_SECRET": "s", "PGPUSH_REPO1_PATH": "/pg/repo/",
                            "PGPUSH_REPO1_STORAGE_PORT": "9443", "PGPUSH_REPO1_HOST_TIMEOUT": "7",
                            "PGPUSH_REPO1_S3_URI_STYLE": "path", "PGPUSH_REPO1_S3_REGION": "eu-west-1"}))
    assert isinstance(st, RetryingStorage) and st.policy.budget == 7.0  # the retry budget is repo1-host-timeout
    s3 = st.backend
    assert isinstance(s3, S3Storage)
    assert s3.client.endpoint == Endpoint("https", "s3.example.com", 9443)
    assert (s3.prefix, s3.client.timeout, s3.client.uri_style, s3.client.region) == ("pg/repo/", 7.0, "path", "eu-west-1")
    with pytest.raises(OptionRequiredError):  # no credentials anywhere
        open_storage(_cfg({}))
    with pytest.raises(OptionRequiredError):  # half a pair
        open_storage(_cfg({"PGPUSH_REPO1_S3_KEY": "k"}))
    with pytest.raises(OptionInvalidValueError) as err:
        open_storage(_cfg({"PGPUSH_REPO1_S3_KEY": "k", "PGPUSH_REPO1_S3_KEY_SECRET": "s",
                           "PGPUSH_REPO1_S3_ENDPOINT": "ftp://x"}))
    assert err.value.code == 32 and "repo1-s3-endpoint" in str(err.value)


def test_credentials_from_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    st = open_storage(_cfg({}))
    creds = st.backend.client._signer.credentials
    assert (creds.key, creds.secret, creds.token) == ("envkey", "envsecret", "envtoken")
    st = open_storage(_cfg({"PGPUSH_REPO1_S3_KEY": "k", "PGPUSH_REPO1_S3_KEY_SECRET": "s"}))
    creds = st.backend.client._signer.credentials
    assert (creds.key, creds.secret, creds.token) == ("k", "s", None)  # options win; no stray token


def test_session_token_is_sent_and_signed(stub_factory) -> None:
    stub = stub_factory(lambda r: ok(EMPTY_LIST))
    client = S3Client(parse_endpoint(f"http://127.0.0.1:{stub.port}"), "bkt", Credentials("k", "s", "tok"), uri_style="path")
    client.request("GET", "", query={"list-type": "2"})
    headers = stub.requests[0].headers
    assert headers["x-amz-security-token"] == "tok"
    assert "x-amz-security-token" in headers["authorization"]


# ---------------------------------------------------------------------------------------------
# requests: payload integrity, retries, connection reuse


def test_put_sends_md5_and_signed_payload_hash(stub_factory) -> None:
    stub = stub_factory(lambda r: ok())
    st = stub.storage()
    st.put("a/b", [b"hello ", b"world"])
    req = stub.requests[0]
    assert (req.method, req.key, req.body) == ("PUT", "/bkt/repo/a/b", b"hello world")
    assert req.headers["content-md5"] == base64.b64encode(hashlib.md5(b"hello world").digest()).decode()
    assert req.headers["x-amz-content-sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert req.headers["if-none-match"] == "*"
    signed = req.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "host", "if-none-match", "x-amz-content-sha256", "x-amz-date"} <= set(signed)
    st.put("a/c", [b"x"], overwrite=True)
    assert "if-none-match" not in stub.requests[1].headers
    assert stub.connections == 1  # one persistent connection


def test_retries_5xx_and_slowdown_with_backoff(stub_factory) -> None:
    replies = [xml_error(503, "SlowDown", "reduce your request rate"), xml_error(500, "InternalError"), ok(EMPTY_LIST)]
    stub = stub_factory(lambda r: replies.pop(0))
    assert stub.retrying().list("d") == []
    assert len(stub.requests) == 3
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_retries_429(stub_factory) -> None:
    replies = [xml_error(429, "TooManyRequests"), ok(EMPTY_LIST)]
    stub = stub_factory(lambda r: replies.pop(0))
    assert stub.retrying().list("d") == []
    assert len(stub.requests) == 2


def test_the_client_itself_does_not_retry_a_5xx(stub_factory) -> None:
    """One layer retries (pgpush/storage/retry.py): the backend reports a 5xx once, transient."""
    stub = stub_factory(lambda r: xml_error(503, "ServiceUnavailable", "try later"))
    with pytest.raises(StorageError) as err:
        stub.storage().info("x")
    assert len(stub.requests) == 1
    assert err.value.transient is True and err.value.code == 103


def test_gives_up_when_the_budget_is_spent(stub_factory) -> None:
    stub = stub_factory(lambda r: xml_error(503, "ServiceUnavailable", "try later"))
    with pytest.raises(StorageError) as err:
        stub.retrying(budget=2.0).info("x")
    assert sum(sleeps) == pytest.approx(2.0)  # waits end with the budget, the last one cut short
    assert len(stub.requests) == len(sleeps) + 1 and len(sleeps) >= 5
    assert err.value.transient is True and err.value.code == 103 and "ServiceUnavailable" in str(err.value)


@pytest.mark.parametrize("status,code", [(400, "InvalidArgument"), (403, "AccessDenied"), (404, "NoSuchBucket"), (409, "Conflict")])
def test_no_retry_on_other_4xx(stub_factory, status: int, code: str) -> None:
    stub = stub_factory(lambda r: xml_error(status, code, "nope"))
    with pytest.raises(StorageError) as err:
        stub.retrying().list("d")
    assert len(stub.requests) == 1 and sleeps == []
    assert err.value.transient is False and err.value.code == 103
    assert code in str(err.value)


def test_stale_keepalive_connection_is_sent_again_at_once(stub_factory) -> None:
    """The one re-send the client keeps: the server closed the kept-alive connection, no answer came."""
    replies: list[Reply] = [ok(EMPTY_LIST), "drop", ok(EMPTY_LIST)]
    stub = stub_factory(lambda r: replies.pop(0))
    st = stub.storage()
    st.list("a")
    assert st.list("b") == []
    assert len(stub.requests) == 3
    assert stub.connections == 2


def test_a_dropped_fresh_connection_is_the_retry_layers(stub_factory) -> None:
    """A new connection that fails is no stale keep-alive: the client reports it, the retry layer waits and retries."""
    replies: list[Reply] = ["drop", ok(EMPTY_LIST)]
    stub = stub_factory(lambda r: replies.pop(0))
    with pytest.raises(StorageError) as err:
        stub.storage().list("a")
    assert err.value.transient is True and len(stub.requests) == 1
    replies[:] = ["drop", ok(EMPTY_LIST)]
    assert stub.retrying().list("a") == []
    assert len(stub.requests) == 3 and len(sleeps) == 1


def test_error_messages_never_show_secrets(stub_factory) -> None:
    stub = stub_factory(lambda r: xml_error(403, "SignatureDoesNotMatch", f"key {KEY} secret {SECRET}"))
    with pytest.raises(StorageError) as err:
        stub.storage().put("x", [b"1"])
    text = str(err.value)
    assert KEY not in text and SECRET not in text and "<redacted>" in text
    assert text.startswith("unable to find a valid repository:\nrepo1: ")


def test_connection_refused_is_transient_and_bounded() -> None:
    st = S3Storage("http://127.0.0.1:1", "bkt", "", key=KEY, secret=SECRET, uri_style="path", timeout=3)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        st.info("x")
    assert time.monotonic() - start < 3.5
    assert err.value.transient is True and err.value.code == 103
    assert str(err.value).startswith("unable to find a valid repository:\nrepo1: [Errno 111] Connection refused")


def test_read_timeout_is_not_sent_again_by_the_client(stub_factory) -> None:
    def slow(req: Req) -> Reply:
        time.sleep(1.5)
        return ok(EMPTY_LIST)

    stub = stub_factory(slow)
    st = stub.storage(timeout=0.5)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        st.list("d")
    assert time.monotonic() - start < 1.2
    assert len(stub.requests) == 1 and err.value.transient is True
    assert "timeout after 0.5s" in str(err.value)


# ---------------------------------------------------------------------------------------------
# conditional writes


def test_if_none_match_fallback_detected_once(stub_factory) -> None:
    objects: dict[str, bytes] = {}

    def store(req: Req) -> Reply:
        if req.method == "PUT" and "if-none-match" in req.headers:
            return xml_error(501, "NotImplemented", "A header you provided implies functionality that is not implemented")
        if req.method == "PUT":
            objects[req.key] = req.body
            return ok()
        if req.method == "HEAD":
            return ok(content_length=str(len(objects[req.key]))) if req.key in objects else (404, {}, b"")
        raise AssertionError(req)

    stub = stub_factory(store)
    st = stub.storage()
    st.put("a", [b"1"])
    assert st.conditional_put is False
    with pytest.raises(FileExistsError):
        st.put("a", [b"2"])
    st.put("b", [b"3"])
    assert objects == {"/bkt/repo/a": b"1", "/bkt/repo/b": b"3"}
    assert sum(1 for r in stub.requests if "if-none-match" in r.headers) == 1


def test_if_none_match_rejected_with_400_message(stub_factory) -> None:
    def store(req: Req) -> Reply:
        if "if-none-match" in req.headers:
            return xml_error(400, "InvalidArgument", "If-None-Match is not supported for this operation")
        return (404, {}, b"") if req.method == "HEAD" else ok()

    stub = stub_factory(store)
    st = stub.storage()
    st.put("a", [b"1"])
    assert st.conditional_put is False
    assert [r.method for r in stub.requests] == ["PUT", "HEAD", "PUT"]


def test_lost_answer_then_412_is_our_own_write(stub_factory) -> None:
    """The PUT went out on a stale kept-alive connection and is sent again; its first send was
    stored and the second gets 412: the ETag says it is ours."""
    data = b"payload"
    etag = hashlib.md5(data).hexdigest()
    replies: list[Reply] = [ok(EMPTY_LIST), "drop", xml_error(412, "PreconditionFailed"),
                            ok(etag=f'"{etag}"', content_length=str(len(data)))]
    stub = stub_factory(lambda r: replies.pop(0))
    st = stub.storage()
    st.list("d")
    st.put("x", [data])
    assert [r.method for r in stub.requests] == ["GET", "PUT", "PUT", "HEAD"]


def test_412_after_lost_answer_with_other_content_is_exists(stub_factory) -> None:
    replies: list[Reply] = [ok(EMPTY_LIST), "drop", xml_error(412, "PreconditionFailed"), ok(etag='"0123"', content_length="3")]
    stub = stub_factory(lambda r: replies.pop(0))
    st = stub.storage()
    st.list("d")
    with pytest.raises(FileExistsError):
        st.put("x", [b"payload"])


@pytest.mark.parametrize("stored,ours", [(b"payload", True), (b"another", False)])
def test_retried_put_finds_the_name_taken(stub_factory, stored: bytes, ours: bool) -> None:
    """The retry layer's view of a lost answer: the next try is refused (412); the stored object,
    read back, is ours (success) or not (FileExistsError)."""
    replies: list[Reply] = ["drop", xml_error(412, "PreconditionFailed"), ok(stored)]
    stub = stub_factory(lambda r: replies.pop(0))
    st = stub.retrying()
    if ours:
        assert st.put("x", iter([b"pay", b"load"])) == 7
    else:
        with pytest.raises(FileExistsError):
            st.put("x", iter([b"pay", b"load"]))
    assert [r.method for r in stub.requests] == ["PUT", "PUT", "GET"]


# ---------------------------------------------------------------------------------------------
# multipart


def _multipart_store(fail_part: int | None = None, error_body_on_complete: int = 0,
                     complete_status: int | None = None, lose_bytes: int = 0) -> tuple[Callable[[Req], Reply], dict]:
    """A scripted store; once completed, the object holds the parts' bytes less ``lose_bytes``."""
    state = {"completes": 0, "aborted": False, "parts": {}, "object": None, "deleted": False}

    def store(req: Req) -> Reply:
        if req.method == "HEAD":
            if state["object"] is None:
                return 404, {}, b""
            return 200, {"Content-Length": str(state["object"])}, b""
        if req.method == "DELETE" and not req.query:
            state["object"], state["deleted"] = None, True
            return 204, {}, b""
        if req.method == "POST" and req.query == "uploads=":
            return ok(b"<InitiateMultipartUploadResult><UploadId>U1</UploadId></InitiateMultipartUploadResult>")
        if req.method == "PUT" and "partNumber=" in req.query:
            number = int(req.query.split("partNumber=")[1].split("&")[0])
            if number == fail_part:
                return xml_error(400, "BadDigest", "The Content-MD5 you specified did not match")
            assert req.headers["content-md5"] == base64.b64encode(hashlib.md5(req.body).digest()).decode()
            state["parts"][number] = req.body
            return ok(etag=f'"{hashlib.md5(req.body).hexdigest()}"')
        if req.method == "POST" and req.query == "uploadId=U1":
            state["completes"] += 1
            state["complete_headers"] = req.headers
            if complete_status:
                return xml_error(complete_status, "PreconditionFailed" if complete_status == 412 else "NotImplemented")
            if state["completes"] <= error_body_on_complete:
                return ok(b"<Error><Code>InternalError</Code><Message>try again</Message></Error>")
            state["object"] = sum(len(part) for part in state["parts"].values()) - lose_bytes
            return ok(b"<CompleteMultipartUploadResult><ETag>\"x-2\"</ETag></CompleteMultipartUploadResult>")
        if req.method == "DELETE" and req.query == "uploadId=U1":
            state["aborted"] = True
            return 204, {}, b""
        raise AssertionError(req)

    return store, state


def test_multipart_upload_parts_and_complete(stub_factory) -> None:
    store, state = _multipart_store()
    stub = stub_factory(store)
    st = stub.storage(part_size=5 * MiB)
    data = bytes(range(256)) * (12 * MiB // 256)
    assert st.put("big", [data[i:i + 1000_000] for i in range(0, len(data), 1000_000)]) == len(data)
    assert [len(state["parts"][n]) for n in sorted(state["parts"])] == [5 * MiB, 5 * MiB, 2 * MiB]
    assert b"".join(state["parts"][n] for n in sorted(state["parts"])) == data
    assert state["completes"] == 1
    assert state["complete_headers"]["if-none-match"] == "*"
    assert not state["aborted"]


def test_multipart_complete_with_error_body_is_retried_whole(stub_factory) -> None:
    """A 200 carrying <Error> on Complete is a transient failure: the upload is aborted, and the
    retry layer sends the object again (its chunks kept in memory, it is small enough)."""
    store, state = _multipart_store(error_body_on_complete=1)
    stub = stub_factory(store)
    st = stub.retrying(part_size=5 * MiB)
    data = bytes(range(256)) * (12 * MiB // 256)
    assert st.put("big", (data[i:i + 1000_000] for i in range(0, len(data), 1000_000))) == len(data)
    assert b"".join(state["parts"][n] for n in sorted(state["parts"])) == data
    assert state["completes"] == 2 and state["aborted"]  # the first upload aborted, the second completed
    assert len(sleeps) == 1


def test_multipart_object_shorter_than_sent_is_removed_and_fails(stub_factory) -> None:
    store, state = _multipart_store(lose_bytes=1)
    stub = stub_factory(store)
    with pytest.raises(StorageError, match=r"holds 12582911 bytes of the 12582912 sent") as err:
        stub.storage(part_size=5 * MiB).put("big", [b"x" * (12 * MiB)])
    assert err.value.code == 103
    assert state["deleted"] and state["object"] is None


def test_multipart_aborted_on_part_failure(stub_factory) -> None:
    store, state = _multipart_store(fail_part=2)
    stub = stub_factory(store)
    with pytest.raises(StorageError) as err:
        stub.storage(part_size=5 * MiB).put("big", [b"x" * (11 * MiB)])
    assert "BadDigest" in str(err.value) and err.value.transient is False
    assert state["aborted"] and state["completes"] == 0


def test_multipart_complete_412_is_exists_and_aborted(stub_factory) -> None:
    store, state = _multipart_store(complete_status=412)
    stub = stub_factory(store)
    with pytest.raises(FileExistsError):
        stub.storage(part_size=5 * MiB).put("big", [b"x" * (6 * MiB)])
    assert state["aborted"]


def test_multipart_complete_without_conditional_support(stub_factory) -> None:
    calls = {"n": 0}
    store, state = _multipart_store()

    def picky(req: Req) -> Reply:
        if req.method == "POST" and req.query == "uploadId=U1" and "if-none-match" in req.headers:
            calls["n"] += 1
            return xml_error(501, "NotImplemented")
        return store(req)

    stub = stub_factory(picky)
    st = stub.storage(part_size=5 * MiB)
    st.put("big", [b"x" * (6 * MiB)])
    assert st.conditional_complete is False and calls["n"] == 1
    assert state["completes"] == 1 and not state["aborted"]


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    base = tmp_path_factory.mktemp("tls")
    cert_file, key_file = base / "cert.pem", base / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_verification(stub_factory, tls_files: tuple[Path, Path]) -> None:
    cert_file, key_file = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    stub = stub_factory(lambda r: ok(EMPTY_LIST), tls=ctx)
    with pytest.raises(StorageError) as err:
        stub.storage("https").list("d")
    assert err.value.transient is False and "certificate" in str(err.value)
    assert stub.storage("https", verify_tls=False).list("d") == []
    assert stub.storage("https", ca_file=str(cert_file)).list("d") == []


# ---------------------------------------------------------------------------------------------
# against SeaweedFS


def test_bad_credentials_are_not_transient(seaweed) -> None:
    st = S3Storage(seaweed.endpoint, seaweed.bucket, "repo", key=seaweed.server.access_key, secret="wrong-secret-value",
                   uri_style="path", timeout=5)
    for op in (lambda: st.list("x"), lambda: st.put("x", [b"1"]), lambda: st.read("x")):
        with pytest.raises(StorageError) as err:
            op()
        assert err.value.transient is False and err.value.code == 103
        assert "SignatureDoesNotMatch" in str(err.value)
        assert "wrong-secret-value" not in str(err.value) and seaweed.server.access_key not in str(err.value)
    st = S3Storage(seaweed.endpoint, seaweed.bucket, "repo", key="UNKNOWNKEY", secret="x", uri_style="path")
    with pytest.raises(StorageError) as err:
        st.list("x")
    assert "InvalidAccessKeyId" in str(err.value) and "UNKNOWNKEY" not in str(err.value)


def test_missing_bucket(seaweed) -> None:
    st = S3Storage(seaweed.endpoint, "pgpush-no-such-bucket", "repo", key=seaweed.server.access_key,
                   secret=seaweed.server.secret_key, uri_style="path")
    for op in (lambda: st.list("x"), lambda: st.put("x", [b"1"]), lambda: st.read("x")):
        with pytest.raises(StorageError) as err:
            op()
        assert not isinstance(err.value, FileNotFoundError)
        assert err.value.transient is False and "NoSuchBucket" in str(err.value)


def test_store_rejects_damaged_body(seaweed) -> None:
    client = seaweed.client()
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(S3Error) as err:
        client.request("PUT", "repo/damaged", headers={"content-md5": wrong_md5}, body=b"payload")
    assert err.value.status == 400 and err.value.s3_code == "BadDigest" and not err.value.transient
    with pytest.raises(FileNotFoundError):
        seaweed.storage("repo").read("damaged")


def test_open_storage_from_options(seaweed) -> None:
    env = {f"PGPUSH_{k.upper().replace('-', '_')}": v for k, v in seaweed.pgpush_options("/some/prefix").items()}
    cfg = load(["info", f"--config={EMPTY_CONFIG}"], environ=env)
    with open_storage(cfg) as st:
        assert isinstance(st.backend, S3Storage)
        st.put("archive/main/archive.info", [b"{}"])
        assert st.read("archive/main/archive.info") == b"{}"
        assert st.list_dirs("archive") == ["main"]
    raw = seaweed.storage("/")
    assert raw.list_dirs("some") == ["prefix"]
    raw.close()


def test_host_style_addressing_on_a_real_store(seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Virtual-host requests (``BUCKET.localhost``) against SeaweedFS: write, list, read, delete.

    The store is real and routes by the Host header (``-s3.domainName=localhost``); only the name
    lookup is the test's, since nothing resolves ``*.localhost`` here.
    """
    import socket

    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            looked_up.append(host)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    endpoint = f"http://localhost:{seaweed.server.s3_port}"
    storage = S3Storage(endpoint, seaweed.bucket, "/repo", key=seaweed.server.access_key,
                        secret=seaweed.server.secret_key, uri_style="host", timeout=10)
    try:
        payload = bytes(range(256)) * 4096
        storage.put("archive/main/f1", [payload])
        with pytest.raises(FileExistsError):
            storage.put("archive/main/f1", [b"other"])
        assert [f.name for f in storage.list("archive/main")] == ["f1"]
        assert b"".join(storage.read_chunks("archive/main/f1")) == payload
        # the same object seen path-style: both addressings name the one bucket
        path_style = seaweed.storage()
        try:
            assert b"".join(path_style.read_chunks("archive/main/f1")) == payload
        finally:
            path_style.close()
        storage.delete("archive/main/f1")
        assert storage.info("archive/main/f1") is None
    finally:
        storage.close()
    assert looked_up and set(looked_up) == {f"{seaweed.bucket}.localhost"}
