"""AWS Signature Version 4 for the ``s3`` service, header form, and the credentials it signs with.

Kept apart from the HTTP exchange (:mod:`pgpush.storage.s3.client`) because it is pure
computation: tested against AWS's documented examples without any server, and the one place
that ever holds the secret key (never logged: ``repr`` hides it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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
