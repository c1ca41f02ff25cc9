"""Repository in S3-compatible object storage (AWS S3, Ceph RGW, SeaweedFS, MinIO): the Storage backend.

Our own small S3 client on the standard library rather than boto3 (see :mod:`pgpush.storage.s3`
and docs/s3.md); this module maps the Storage contract (pgpush/storage/base.py) onto it:

- Names are keys below the prefix ``repo1-path``.  There are no temporary names: an S3 PUT is
  atomic and durable when it is acknowledged.
- ``put`` without ``overwrite`` is a conditional write (``If-None-Match: *``, 412 →
  :class:`FileExistsError`); a store that rejects the header is detected once per storage
  object and handled with a HEAD before the PUT (racy, see docs/s3.md).  Objects larger than
  one part (16 MiB) go up as a multipart upload that is aborted on any failure; once
  completed, a HEAD checks that the object holds every byte sent (a single PUT is checked by
  the store itself through its Content-MD5).
- A request the client had to send twice (a stale keep-alive connection) is *ambiguous*: a
  412 on a conditional PUT, or NoSuchUpload on a Complete, may be the first send's own
  success; the object's ETag, compared with the MD5 we sent, tells.
- Failures are :class:`~pgpush.storage.base.StorageError` (103), ``transient`` when a later
  try may help; trying again is the retry layer's (:mod:`pgpush.storage.retry`).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import os
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime

from pgpush.config import Config
from pgpush.errors import OptionInvalidValueError, OptionRequiredError
from pgpush.fsutil import TMP_SUFFIX
from pgpush.log import LOG
from pgpush.storage.base import CHUNK, FileInfo, Storage, StorageError, check_name
from pgpush.storage.s3.client import (
    REPO_CODES,
    ConnectionFailure,
    Endpoint,
    S3Client,
    S3Error,
    escape,
    parse_endpoint,
    parse_xml,
    xml_children,
    xml_text,
)
from pgpush.storage.s3.sigv4 import Credentials

PART_SIZE = 16 * 1024 * 1024  # objects up to this size go up in one PUT
LIST_MAX = 1000  # keys per ListObjectsV2 page and per DeleteObjects request


class S3Storage(Storage):
    def __init__(self, endpoint: str | Endpoint, bucket: str, prefix: str = "", *, key: str | None = None,
                 secret: str | None = None, region: str = "us-east-1", uri_style: str = "host", port: int = 443,
                 verify_tls: bool = True, ca_file: str | None = None, timeout: float = 30.0,
                 connect_timeout: float | None = None, part_size: int = PART_SIZE, label: str = "repo1"):
        if not isinstance(endpoint, Endpoint):
            endpoint = parse_endpoint(endpoint, port)
        credentials = Credentials.resolve(key, secret)
        if credentials is None:
            raise OptionRequiredError(
                f"s3 repository requires options {label}-s3-key and {label}-s3-key-secret "
                "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)")
        if part_size < 5 * 1024 * 1024:
            raise ValueError("part size must be at least 5 MiB (the S3 minimum)")
        self.client = S3Client(endpoint, bucket, credentials, region=region, uri_style=uri_style,
                               verify_tls=verify_tls, ca_file=ca_file, timeout=timeout,
                               connect_timeout=connect_timeout, label=label)
        stripped = prefix.strip("/")
        self.prefix = f"{stripped}/" if stripped else ""
        self.part_size = part_size
        self.description = f"{self.client.description}/{self.prefix}"
        # Whether the store implements If-None-Match on PUT / CompleteMultipartUpload (None: not known yet).
        self.conditional_put: bool | None = None
        self.conditional_complete: bool | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> S3Storage:
        port = int(cfg["repo1-storage-port"])
        raw = cfg.require("repo1-s3-endpoint")
        try:
            endpoint = parse_endpoint(str(raw), port)
        except ValueError as exc:
            where = getattr(cfg, "sources", {}).get("repo1-s3-endpoint", "")
            raise OptionInvalidValueError(
                f"option '{cfg.key('repo1-s3-endpoint')}' has invalid value '{raw}'{' ' + where if where else ''}: {exc}") from None
        key, secret = cfg.get("repo1-s3-key"), cfg.get("repo1-s3-key-secret")
        if bool(key) != bool(secret):
            missing = cfg.key("repo1-s3-key-secret" if key else "repo1-s3-key")
            raise OptionRequiredError(f"{cfg.command} command requires option: {missing}")
        if not key and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
            raise OptionRequiredError(
                f"{cfg.command} command requires option: {cfg.key('repo1-s3-key')} "
                f"(and {cfg.key('repo1-s3-key-secret')}; or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment)")
        return cls(
            endpoint, str(cfg.require("repo1-s3-bucket")), str(cfg["repo1-path"]),
            key=key, secret=secret, region=str(cfg["repo1-s3-region"]), uri_style=str(cfg["repo1-s3-uri-style"]),
            verify_tls=bool(cfg["repo1-storage-verify-tls"]), ca_file=cfg.get("repo1-storage-ca-file"),
            timeout=float(cfg["repo1-host-timeout"]), label=cfg.repo_label,
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
                root = parse_xml(resp.body)
            except ET.ParseError as exc:
                raise StorageError(f"unable to {what}: malformed ListObjectsV2 response: {exc} ({self.description})",
                                   transient=True) from None
            yield root
            token = xml_text(root, "NextContinuationToken")
            if xml_text(root, "IsTruncated").lower() != "true" or not token:
                return

    def list_dirs(self, directory: str) -> list[str]:
        prefix = self._dir_prefix(directory)
        out = []
        for page in self._list_pages(prefix, "/", f"list '{directory}'"):
            for item in xml_children(page, "CommonPrefixes"):
                name = xml_text(item, "Prefix")[len(prefix):].rstrip("/")
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
            root = parse_xml(resp.body)
            for item in xml_children(root, "Upload"):
                out.append((xml_text(item, "Key")[len(self.prefix):], xml_text(item, "UploadId")))
            if xml_text(root, "IsTruncated").lower() != "true":
                return out
            query["key-marker"] = xml_text(root, "NextKeyMarker")
            query["upload-id-marker"] = xml_text(root, "NextUploadIdMarker")

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
        upload_id = xml_text(parse_xml(resp.body), "UploadId")
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
                    raise self.client.failure_error(ConnectionFailure(exc, True, False), what) from None
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
            for item in xml_children(page, "Contents"):
                key = xml_text(item, "Key")
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
            if exc.status not in (400, 405, 501) or exc.s3_code in REPO_CODES:
                raise
            for key in keys:  # a store without DeleteObjects
                self.client.request("DELETE", key, what=what)
            return
        root = parse_xml(resp.body) if resp.body else None
        errors = xml_children(root, "Error") if root is not None else []
        if errors:
            first = errors[0]
            raise StorageError(self.client.scrub(
                f"unable to {what}: {len(errors)} objects not deleted, e.g. '{xml_text(first, 'Key')}': "
                f"{xml_text(first, 'Code')} {xml_text(first, 'Message')} ({self.description})"))


    # -- listing, at the end: below ``def list`` the name ``list`` in an annotation is the method

    def list(self, directory: str) -> list[FileInfo]:
        prefix = self._dir_prefix(directory)
        out = []
        for page in self._list_pages(prefix, "/", f"list '{directory}'"):
            for item in xml_children(page, "Contents"):
                name = xml_text(item, "Key")[len(prefix):]
                if name and "/" not in name and TMP_SUFFIX not in name:
                    out.append(FileInfo(name, int(xml_text(item, "Size", "0") or 0), _iso_time(xml_text(item, "LastModified"))))
        return out


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
