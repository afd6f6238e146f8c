"""Where a sealed file's bytes come from: a local file, an HTTP(S) server, or an S3 bucket.

A :class:`ByteSource` answers positional reads of an exact length, from any thread.
Everything it returns is untrusted, exactly like a local file's bytes: the reader
authenticates the header with the key and every chunk with its tag before any
plaintext leaves (:mod:`weightvault.sealing.reader`). A server that lies (other
bytes, another range, a truncated, grown or replaced object) therefore gets the same
errors as a tampered file, and no code path trusts a remote byte more than a local one.
What a remote source adds is transport only:

* **ranges**: only the bytes a read asks for are fetched (``Range: bytes=a-b``), and the
  first 64 KiB (preamble, recipients, header, tag table of most files) in one request;
* **consistency**: the object's size and validator (ETag) are fixed by the first answer;
  every later range must carry the same total size and is sent ``If-Match`` the ETag, so
  an object replaced mid-read is refused (``PayloadError``) instead of mixing versions;
* **retries**: a dropped connection, a timeout, 429 or a 5xx is retried with
  exponential backoff, resuming after the bytes already received, so a flaky server
  costs time, never correctness;
* **parallelism**: sources are thread-safe; the reader's worker threads each fetch and
  decrypt their own runs, so that many ranges are in flight at once.

Errors. A missing object is ``FileNotFoundError`` and a refused one ``PermissionError``,
as for local files; a server or network that keeps failing is
:class:`~weightvault.errors.TransportError` (retryable); an answer that contradicts
the request or the object's size is :class:`~weightvault.errors.PayloadError`.
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from weightvault.errors import ConfigError, PayloadError, TransportError
from weightvault.sealing.fileio import pread_exact

if TYPE_CHECKING:
    import urllib3

__all__ = [
    "ByteSource",
    "HTTPSource",
    "LocalSource",
    "Location",
    "S3Source",
    "display",
    "fetch_small",
    "is_remote",
    "join_location",
    "open_source",
]

#: A sealed file or model directory: a local path, or an ``http://``, ``https://`` or ``s3://`` URL.
Location: TypeAlias = str | os.PathLike[str]

REMOTE_SCHEMES: Final = ("http://", "https://", "s3://")
#: Bytes fetched by the first request to a remote file and kept: enough for the preamble,
#: recipients, header, tag table and padding of files with a few hundred tensors.
HEAD_BYTES: Final = 64 << 10
#: Attempts per range after the first, each after twice the previous pause, starting here.
RETRIES: Final = 5
BACKOFF_S: Final = 0.1
#: The most a whole-object fetch (a manifest, a tokenizer, a config) may return.
SMALL_LIMIT: Final = 256 << 20
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def is_remote(location: Location) -> bool:
    return isinstance(location, str) and location.startswith(REMOTE_SCHEMES)


def join_location(base: Location, relative: str) -> Location:
    """``relative`` (a manifest's POSIX path, already validated) inside ``base``.

    Raises:
        ValueError: an empty, ``.`` or ``..`` segment (the manifest parser refuses them first).
    """
    segments = relative.split("/")
    if any(p in ("", ".", "..") for p in segments):
        raise ValueError(f"not a relative path inside the model: {relative!r}")
    if is_remote(base):
        assert isinstance(base, str)
        parts = [urllib.parse.quote(p, safe="") for p in segments]
        return base.rstrip("/") + "/" + "/".join(parts)
    return Path(base) / relative


def display(location: Location) -> str:
    """A location for messages, without credentials or query strings."""
    if not is_remote(location):
        return str(location)
    parsed = urllib.parse.urlsplit(str(location))
    return f"{parsed.scheme}://{parsed.hostname or ''}{f':{parsed.port}' if parsed.port else ''}{parsed.path}"


class ByteSource(Protocol):
    """Positional, exact-length, thread-safe reads of one file's bytes."""

    name: str
    size: int
    #: Reads in flight per decrypting worker: 1 for a local file (a read is a memory copy),
    #: more for a remote one, whose reads mostly wait on the network.
    overlap: int

    def read_into(self, buf: memoryview, offset: int, short: str) -> None:
        """Fill ``buf`` from ``offset``; ``PayloadError(short)`` if the file ends first."""
        ...

    def close(self) -> None: ...


class LocalSource:
    """A local file, read with ``preadv`` (no shared position; the GIL is released)."""

    overlap = 1

    def __init__(self, path: Location) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def fileno(self) -> int:
        return self._fd

    def read_into(self, buf: memoryview, offset: int, short: str) -> None:
        pread_exact(self._fd, buf, offset, short)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _wanted(n: int, offset: int, size: int, short: str) -> bool:
    """Whether a read of ``n`` bytes at ``offset`` needs fetching (False: nothing to read).

    Raises:
        PayloadError: ``short``, the read runs past the object's end (as a short local read).
    """
    if n == 0:
        return False
    if offset < 0 or offset + n > size:
        raise PayloadError(short)
    return True


class _RetryableError(Exception):
    """A failure worth another attempt (the server or the network, not the bytes)."""


def _pause(attempt: int) -> None:
    time.sleep(BACKOFF_S * (2 ** (attempt - 1)))


def _http_pool(connections: int) -> urllib3.PoolManager:
    import urllib3

    return urllib3.PoolManager(
        num_pools=4,
        maxsize=connections,
        # Our own retries resume after the bytes received; urllib3's would restart the range.
        # Redirects (a CDN, a presigned object store URL) are followed, up to five.
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        timeout=urllib3.Timeout(connect=10.0, read=30.0),
        # Ranges are of the stored bytes: a compressed answer would have other offsets.
        headers={"accept-encoding": "identity", "user-agent": "weightvault"},
    )


def _http_status_error(name: str, status: int) -> Exception:
    if status in {404, 410}:
        return FileNotFoundError(f"{name}: HTTP {status}")
    if status in (401, 403):
        return PermissionError(f"{name}: HTTP {status}")
    return TransportError(f"{name}: HTTP {status}")


class HTTPSource:
    """A file on an HTTP(S) server that answers range requests (nginx, S3, any CDN).

    Built on urllib3: a thread-safe connection pool, TLS verified against the system's
    CAs, and ``readinto`` straight from the socket into the caller's buffer (one copy,
    the GIL released while the kernel copies).
    """

    overlap = 3

    def __init__(self, url: str, *, connections: int = 32) -> None:
        self.url = url
        self.name = display(url)
        self._pool = _http_pool(connections)
        self.size = -1
        self._etag: str | None = None
        try:
            self._head = self._first()
        except BaseException:
            self._pool.clear()
            raise

    def _get(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        return self._pool.request("GET", self.url, headers=headers, preload_content=False, decode_content=False)

    def _first(self) -> bytes:
        """The first bytes, which also fix the object's size and ETag."""
        attempt = 0
        while True:
            try:
                r = self._get({"range": f"bytes=0-{HEAD_BYTES - 1}"})
                try:
                    if r.status == 416:  # an empty object has no first byte
                        self.size = 0
                        return b""
                    if r.status == 200:
                        raise TransportError(f"{self.name}: the server does not answer range requests (HTTP 200)")
                    if r.status != 206:
                        self._raise_status(r.status)
                    start, end, total = self._content_range(r.headers.get("content-range"))
                    if start != 0 or end >= total or end > HEAD_BYTES - 1:
                        asked = f"0-{HEAD_BYTES - 1}"
                        raise PayloadError(f"{self.name}: the server answered bytes {start}-{end} for {asked}")
                    head = bytearray(end + 1)
                    got = [0]
                    self._fill(r, memoryview(head), got)
                    if got[0] < len(head):
                        raise _RetryableError("the connection closed early")
                    # If-Match compares strongly (RFC 9110 13.1.1): a weak ETag never matches,
                    # so only a strong one is sent back; the size check and the tags remain.
                    etag = r.headers.get("etag")
                    self.size, self._etag = total, etag if etag and not etag.startswith("W/") else None
                    return bytes(head)
                finally:
                    r.close()
                    r.release_conn()
            except _retryable() as exc:
                _raise_if_permanent(self.name, exc)
                attempt += 1
                if attempt > RETRIES:
                    raise TransportError(f"{self.name}: {_why(exc)} (after {RETRIES} retries)") from exc
                _pause(attempt)

    def _fill(self, r: urllib3.BaseHTTPResponse, view: memoryview, got: list[int]) -> None:
        """Read the body into ``view``, counting in ``got[0]`` (kept when the connection drops midway).

        Raises:
            PayloadError: the body is longer than the range announced.
        """
        while got[0] < len(view):
            n = r.readinto(view[got[0] :])
            if not n:
                return
            got[0] += n
        if r.read(1):
            raise PayloadError(f"{self.name}: the server sent more bytes than the range it announced")

    def _raise_status(self, status: int) -> None:
        if status == 429 or status >= 500:
            raise _RetryableError(f"HTTP {status}")
        if status == 412:
            raise PayloadError(f"{self.name} changed while being read (its ETag no longer matches)")
        raise _http_status_error(self.name, status)

    def _content_range(self, value: str | None) -> tuple[int, int, int]:
        match = _CONTENT_RANGE.fullmatch(value or "")
        if match is None:
            raise PayloadError(f"{self.name}: a range answer without a valid Content-Range ({value!r})")
        start, end, total = (int(g) for g in match.groups())
        if end < start:
            raise PayloadError(f"{self.name}: the server answered an empty or inverted range {value!r}")
        return start, end, total

    def read_into(self, buf: memoryview, offset: int, short: str) -> None:
        n = len(buf)
        if not _wanted(n, offset, self.size, short):
            return
        if offset + n <= len(self._head):
            buf[:] = self._head[offset : offset + n]
            return
        done = attempt = 0
        while done < n:
            start, end = offset + done, offset + n - 1
            headers = {"range": f"bytes={start}-{end}"}
            if self._etag is not None:
                headers["if-match"] = self._etag
            got = [0]
            try:
                r = self._get(headers)
                try:
                    if r.status == 416:
                        raise PayloadError(short)
                    if r.status != 206:
                        self._raise_status(r.status)
                    a, b, total = self._content_range(r.headers.get("content-range"))
                    if total != self.size:
                        raise PayloadError(f"{self.name} changed size while being read ({self.size} -> {total} bytes)")
                    if (a, b) != (start, end):
                        raise PayloadError(f"{self.name}: the server answered bytes {a}-{b} for {start}-{end}")
                    self._fill(r, buf[done:], got)
                finally:
                    r.close()
                    r.release_conn()
                if done + got[0] < n:
                    raise _RetryableError("the connection closed early")
            except _retryable() as exc:
                _raise_if_permanent(self.name, exc)
                if got[0]:  # progress: a later drop starts a fresh series of retries
                    attempt = 0
                attempt += 1
                if attempt > RETRIES:
                    raise TransportError(f"{self.name}: {_why(exc)} (after {RETRIES} retries)") from exc
                _pause(attempt)
            finally:
                done += got[0]

    def close(self) -> None:
        self._pool.clear()


def _retryable() -> tuple[type[Exception], ...]:
    """Worth another attempt: ours, and what urllib3 raises for a connection refused, reset,
    timed out or cut short."""
    import urllib3

    return (_RetryableError, urllib3.exceptions.HTTPError)


def _raise_if_permanent(name: str, exc: BaseException) -> None:
    """A certificate that does not verify will not verify on the next try either."""
    import urllib3.exceptions as ue

    reason = exc.reason if isinstance(exc, ue.MaxRetryError) else exc
    if isinstance(reason, ue.SSLError):
        raise TransportError(f"{name}: TLS failed ({_ssl_reason(reason)})") from exc


def _ssl_reason(exc: BaseException) -> str:
    text = str(exc)
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else type(exc).__name__


def _why(exc: BaseException) -> str:
    """Why an attempt failed, in words, without the URL (which may carry credentials)."""
    import urllib3.exceptions as ue

    if isinstance(exc, ue.ProtocolError):
        return "the connection closed before the answer was complete"
    if isinstance(exc, ue.TimeoutError):
        return "timed out"
    if isinstance(exc, ue.MaxRetryError):
        return f"cannot connect ({type(exc.reason).__name__})"
    if isinstance(exc, ue.HTTPError):
        return type(exc).__name__
    return str(exc) or type(exc).__name__


def _s3_store(bucket: str) -> Any:
    """An obstore S3Store for ``bucket``, configured like the AWS tools: AWS_* environment variables
    (AWS_ENDPOINT_URL for S3-compatible servers, AWS_ALLOW_HTTP=true for plain-HTTP ones)."""
    try:
        from obstore.store import S3Store
    except ImportError as exc:
        raise ConfigError("s3:// locations need obstore: pip install 'weightvault[s3]'") from exc
    retry = {"max_retries": RETRIES, "retry_timeout": _timedelta(120)}
    return S3Store(bucket, retry_config=retry)  # type: ignore[arg-type]


def _timedelta(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


def _split_s3(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(url)
    key = urllib.parse.unquote(parsed.path.lstrip("/"))
    if not parsed.netloc or not key:
        raise ConfigError(f"{url}: an S3 location is s3://BUCKET/KEY")
    return parsed.netloc, key


def _s3_error(name: str, exc: Exception) -> Exception:
    import obstore.exceptions as oe

    if isinstance(exc, FileNotFoundError | PermissionError):
        return type(exc)(f"{name}: {type(exc).__name__}")
    if isinstance(exc, oe.PreconditionError):
        return PayloadError(f"{name} changed while being read (its ETag no longer matches)")
    if isinstance(exc, oe.PermissionDeniedError | oe.UnauthenticatedError):
        return PermissionError(f"{name}: {type(exc).__name__}")
    text = str(exc)
    if "416" in text:
        return PayloadError(f"{name}: a range beyond the object's end")
    return TransportError(f"{name}: {type(exc).__name__}")


class S3Source:
    """An object in an S3 bucket (or an S3-compatible server), through obstore's ranged GETs."""

    overlap = 3

    def __init__(self, url: str) -> None:
        self.name = display(url)
        bucket, self._key = _split_s3(url)
        self._store = _s3_store(bucket)  # ConfigError with the install hint when obstore is missing
        import obstore

        try:
            meta = obstore.head(self._store, self._key)
        except Exception as exc:
            raise _s3_error(self.name, exc) from exc
        self.size = int(meta["size"])
        self._etag: str | None = meta.get("e_tag")

    def read_into(self, buf: memoryview, offset: int, short: str) -> None:
        import obstore

        n = len(buf)
        if not _wanted(n, offset, self.size, short):
            return
        options: dict[str, Any] = {"range": (offset, offset + n)}
        if self._etag is not None:
            options["if_match"] = self._etag
        try:
            data = obstore.get(self._store, self._key, options=options).bytes()  # type: ignore[arg-type]
        except Exception as exc:
            raise _s3_error(self.name, exc) from exc
        view = memoryview(data)
        if view.nbytes != n:
            raise PayloadError(f"{self.name}: the server answered {view.nbytes} bytes for a range of {n}")
        buf[:] = view

    def close(self) -> None:
        pass


def open_source(location: Location) -> ByteSource:
    """A source for ``location``.

    Raises:
        FileNotFoundError, PermissionError: as for local files.
        TransportError: the server cannot be reached or keeps failing.
        ConfigError: an ``s3://`` location without obstore installed, or malformed.
    """
    if isinstance(location, str) and location.startswith(("http://", "https://")):
        return HTTPSource(location)
    if isinstance(location, str) and location.startswith("s3://"):
        return S3Source(location)
    return LocalSource(location)


def fetch_small(location: Location, limit: int = SMALL_LIMIT) -> bytes:
    """A whole small file (a manifest, a config, a tokenizer) read into memory.

    Raises:
        PayloadError: it is larger than ``limit``.
        (and what :func:`open_source` raises)
    """
    if not is_remote(location):
        path = Path(location)
        if path.stat().st_size > limit:
            raise PayloadError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()
    source = open_source(location)
    try:
        if source.size > limit:
            raise PayloadError(f"{source.name} is larger than {limit} bytes")
        buf = bytearray(source.size)
        source.read_into(memoryview(buf), 0, f"{source.name} is truncated")
        return bytes(buf)
    finally:
        source.close()
