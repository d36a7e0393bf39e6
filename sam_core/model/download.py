"""A resumable, verified checkpoint download: a file reaches its final path only after its checks pass."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import filelock
import httpx
import tenacity
from tqdm import tqdm

from sam_core.errors import ChecksumMismatch, DownloadError
from sam_core.model.verify import normalise_sha256, verify, write_sidecar

log = logging.getLogger(__name__)

_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class _TransientError(Exception):
    """A failure worth retrying: the network, a 5xx, or a transfer cut short."""


@contextlib.contextmanager
def exclusive_lock(dest: Path) -> Iterator[None]:
    """Serialise work on `dest` across processes (and threads: each call takes its own lock object).

    filelock locks `<dest>.lock` with the platform's own primitive (flock on POSIX, msvcrt on Windows) and
    leaves the file behind, as it must: deleting it would let a third process lock a new inode while the
    second still holds the old one.
    """
    lock = filelock.FileLock(dest.with_name(dest.name + ".lock"))
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        log.info("waiting for another process working on %s", dest)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _display_url(url: str) -> str:
    """The URL without credentials or query: signed mirror URLs must not reach logs or error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes 10-99/100` or `bytes */100`; None where absent or unknown."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def download_checkpoint(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size_bytes: int | None,
    md5_prefix: str | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
    retries: int = 3,
    retry_backoff_s: float = 1.0,
) -> Path:
    """Download `url` to `dest`, resuming a `<dest>.part` left by an earlier attempt; returns `dest`.

    Transient failures (network errors, 408/429/5xx, a transfer cut short) are retried `retries` times with
    exponential backoff from `retry_backoff_s`, each retry resuming with an HTTP Range request. The finished
    file is checked for size, sha256 and MD5 prefix (None skips a check) before an atomic rename to `dest`:
    a file that fails is deleted and never placed at `dest` (ChecksumMismatch). When retries run out or the
    server refuses (4xx), raises DownloadError and keeps the `.part` for the next attempt to resume. Always
    downloads, even if `dest` exists; `resolve_checkpoint` is the one that reuses a valid file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(dest):
        download_locked(
            url,
            dest,
            sha256=sha256,
            size_bytes=size_bytes,
            md5_prefix=md5_prefix,
            progress=progress,
            timeout_s=timeout_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
        )
    return dest


def download_locked(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size_bytes: int | None,
    md5_prefix: str | None,
    progress: bool,
    timeout_s: float = 30.0,
    retries: int = 3,
    retry_backoff_s: float = 1.0,
) -> tuple[str, str | None]:
    """`download_checkpoint` for a caller holding the lock on `dest`; returns (sha256, md5 or None)."""
    normalise_sha256(sha256)  # a malformed expectation should fail before gigabytes move, not after
    part = dest.with_suffix(dest.suffix + ".part")
    shown = _display_url(url)
    log.info("downloading %s to %s", shown, dest)

    def retrying(state: tenacity.RetryCallState) -> None:
        log.warning(
            "download of %s interrupted (%s); retry %d/%d in %.1fs",
            shown,
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
            retries,
            state.upcoming_sleep,
        )

    attempts = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_TransientError),
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=retry_backoff_s),
        before_sleep=retrying,
        reraise=True,
    )
    # identity encoding: byte ranges must count file bytes, not compressed ones.
    with httpx.Client(timeout=timeout_s, follow_redirects=True, headers={"Accept-Encoding": "identity"}) as client:
        try:
            for attempt in attempts:
                with attempt:
                    # False: the partial file was discarded; start over at once (not a failed attempt).
                    while not _fetch_into(client, url, part, size_bytes=size_bytes, progress=progress, label=dest.name):
                        pass
        except _TransientError as exc:
            raise DownloadError(
                f"downloading {shown} failed after {retries + 1} attempts ({exc}); "
                f"{part} is kept and the next attempt resumes it"
            ) from exc
    try:
        digests = verify(part, sha256=sha256, size_bytes=size_bytes, md5_prefix=md5_prefix, use_sidecar=False)
    except ChecksumMismatch:
        # Resuming wrong bytes can never succeed: the next attempt must start from zero.
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    write_sidecar(dest, dest.stat(), *digests)
    log.info("downloaded and verified %s (sha256 %s)", dest, digests[0])
    return digests


def _fetch_into(
    client: httpx.Client, url: str, part: Path, *, size_bytes: int | None, progress: bool, label: str
) -> bool:
    """One GET that appends to `part` (or rewrites it); True once `part` holds the whole body.

    False means the partial file was discarded and the caller should start over at once. Raises
    _TransientError for what a retry may fix, DownloadError for what it will not, ChecksumMismatch when the
    server announces a size other than the expected one.
    """
    shown = _display_url(url)
    offset = part.stat().st_size if part.exists() else 0
    if size_bytes is not None and offset > size_bytes:
        log.warning("%s is larger than the expected %d bytes; starting over", part, size_bytes)
        part.unlink()
        offset = 0
    if size_bytes is not None and offset == size_bytes and offset > 0:
        return True  # an earlier run got every byte but stopped before verifying
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            answer = _read_answer(response, part, offset, shown, label)
            if isinstance(answer, bool):
                return answer
            mode, offset, total = answer
            if total is not None and size_bytes is not None and total != size_bytes:
                # Fail before moving gigabytes of the wrong file.
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"size check failed for {shown}: expected {size_bytes} bytes, the server reports {total}"
                )
            expected_total = total if total is not None else size_bytes
            _write_body(response, part, mode, offset, expected_total, progress=progress, label=label)
    except httpx.TransportError as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    received = part.stat().st_size
    if expected_total is not None and received < expected_total:
        raise _TransientError(f"connection closed after {received} of {expected_total} bytes")
    return True


def _read_answer(
    response: httpx.Response, part: Path, offset: int, shown: str, label: str
) -> bool | tuple[str, int, int | None]:
    """What the server's status means for `part`: True (already complete), False (discarded: start over), or
    (file mode, the offset the body starts at, the total size announced)."""
    status = response.status_code
    if status == 416 and offset:
        # Our range starts at or past the end: either the part is complete or it is not this file.
        _, total = _parse_content_range(response.headers.get("content-range"))
        if total == offset:
            return True
        log.warning("%s refused to resume at byte %d; starting over", shown, offset)
        part.unlink()
        return False
    if status == 206 and offset:
        start, total = _parse_content_range(response.headers.get("content-range"))
        if start != offset:
            log.warning("%s answered a different range than asked; starting over", shown)
            part.unlink()
            return False
        return "ab", offset, total
    if status == 200:
        if offset:
            log.info("%s ignored the Range request; restarting %s from zero", shown, label)
        length = response.headers.get("content-length")
        return "wb", 0, int(length) if length and length.isdigit() else None
    if status in (408, 429) or status >= 500:
        raise _TransientError(f"HTTP {status}")
    raise DownloadError(f"GET {shown} returned HTTP {status}")


def _write_body(
    response: httpx.Response,
    part: Path,
    mode: str,
    offset: int,
    expected_total: int | None,
    *,
    progress: bool,
    label: str,
) -> None:
    """Stream the body into `part` with a progress bar, then fsync it."""
    with (
        part.open(mode) as out,
        tqdm(
            total=expected_total,
            initial=offset,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None if progress else True,  # None: shown only on a terminal
        ) as bar,
    ):
        for block in response.iter_bytes(_DOWNLOAD_CHUNK_BYTES):
            out.write(block)
            bar.update(len(block))
        out.flush()
        # The rename that follows must not publish data still in the page cache.
        os.fsync(out.fileno())
