"""Repository in S3-compatible object storage, on a small S3 client of our own.

The standard library (``http.client``, ``ssl``, ``hmac``, ``hashlib``) rather than
boto3/botocore: those add tens of megabytes (35 MB for boto3 1.44 and its dependencies, far
more with older botocore releases) and ~0.4 s of imports to a single-file zipapp that is
copied onto every database host and started once per WAL segment, while the subset of S3 we
need is small: GET, PUT, HEAD, DELETE, ListObjectsV2, DeleteObjects and multipart upload.
See docs/s3.md.

- :mod:`~pgpush.storage.s3.sigv4`: AWS Signature Version 4 (``Authorization`` header) with
  the SHA-256 of every payload (never ``UNSIGNED-PAYLOAD``), and the credentials
  (``repo1-s3-key``/``repo1-s3-key-secret``, else ``AWS_ACCESS_KEY_ID``/
  ``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``; never in a log line or a message).
- :mod:`~pgpush.storage.s3.client`: the HTTP exchange: endpoints (``host``, ``host:port``,
  ``http(s)://host[:port]``; path- or host-style addressing; TLS verified unless
  ``repo1-storage-verify-tls=n``), one persistent connection, every request carrying
  ``Content-MD5`` so the store refuses a body damaged in transit, errors classified.
- :mod:`~pgpush.storage.s3.storage`: :class:`S3Storage`, the Storage contract on top.

This package's ``__init__`` imports nothing: importing a submodule costs only what it needs.
"""
