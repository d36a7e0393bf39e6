"""The official SAM checkpoint files: a registry, a resumable verified download, and checksum checks.

A file reaches its final path only after its size and hashes check out; building models is `models.py`'s job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from sam_core.errors import CheckpointError, ChecksumMismatch, DownloadError

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 8 * 1024 * 1024
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MD5_SUFFIX_RE = re.compile(r"_([0-9a-f]{6})\.pth$")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@dataclass(frozen=True)
class CheckpointInfo:
    """One official checkpoint file; `size_bytes` or `sha256` is None when unknown (that check is skipped)."""

    model_type: str
    filename: str
    url: str
    size_bytes: int | None
    sha256: str | None

    @property
    def md5_prefix(self) -> str | None:
        """The first 6 hex digits of the file's MD5, which Meta puts in the file name (`sam_vit_b_01ec64`)."""
        match = _MD5_SUFFIX_RE.search(self.filename)
        return match.group(1) if match else None


def _official(model_type: str, filename: str, size_bytes: int, sha256: str) -> CheckpointInfo:
    return CheckpointInfo(model_type, filename, _OFFICIAL_BASE_URL + filename, size_bytes, sha256)


# Meta publishes no hashes. These sizes and sha256 values come from third-party model tables (the vit_b size
# also from a download log) and could not be confirmed from here. The only first-party check is the file
# name's suffix, the first 6 hex digits of the file's MD5, so verification against these values checks it too
# and says which check failed. A sha256 the user supplies overrides the values below.
OFFICIAL_CHECKPOINTS: dict[str, CheckpointInfo] = {
    info.model_type: info
    for info in (
        _official(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            2_564_550_879,
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
        _official(
            "vit_l",
            "sam_vit_l_0b3195.pth",
            1_249_524_607,
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        _official(
            "vit_b",
            "sam_vit_b_01ec64.pth",
            375_042_383,
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
    )
}

_OFFICIAL_BY_FILENAME = {info.filename: info for info in OFFICIAL_CHECKPOINTS.values()}

_REGISTRY_HINT = (
    "; the expected values come from third-party tables (Meta publishes no hashes): if you trust this file, "
    "set checkpoint_sha256 to its sha256 to override them"
)


# ---- hashing and verification ---------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = HASH_CHUNK_BYTES) -> str:
    """The hex sha256 of a file, read in `chunk`-byte blocks so memory stays flat for multi-GB files."""
    return _hash_file(path, with_md5=False, chunk=chunk)[0]


def _hash_file(path: Path, *, with_md5: bool, chunk: int = HASH_CHUNK_BYTES) -> tuple[str, str | None]:
    # Both digests in one pass: reading 2.5 GB twice costs more than the extra MD5 arithmetic.
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
    with path.open("rb") as stream:
        while block := stream.read(chunk):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
    return sha.hexdigest(), md5.hexdigest() if md5 is not None else None


def verify_checkpoint(
    path: Path,
    *,
    sha256: str | None,
    size_bytes: int | None,
    md5_prefix: str | None = None,
    use_sidecar: bool = False,
) -> str:
    """Check a file's size, sha256 and (optionally) MD5 prefix; returns its sha256.

    A None expectation skips that check. Raises ChecksumMismatch naming the failed check, the expected and
    actual values and the path; never returns for a bad file. With `use_sidecar`, a hash cached in
    `<file>.sha256` for the file's current (size, mtime_ns) is trusted instead of rehashing, and a freshly
    verified hash is cached there.
    """
    digests = _verify(path, sha256=sha256, size_bytes=size_bytes, md5_prefix=md5_prefix, use_sidecar=use_sidecar)
    return digests[0]


def _verify(
    path: Path, *, sha256: str | None, size_bytes: int | None, md5_prefix: str | None, use_sidecar: bool
) -> tuple[str, str | None]:
    expected_sha = _normalise_sha256(sha256)
    try:
        before = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist", field="checkpoint") from None
    # Size first: it is free and catches truncated files without hashing gigabytes.
    if size_bytes is not None and before.st_size != size_bytes:
        raise ChecksumMismatch(f"size check failed for {path}: expected {size_bytes} bytes, got {before.st_size} bytes")
    need_md5 = md5_prefix is not None
    digests = _read_sidecar(path, before, need_md5=need_md5) if use_sidecar else None
    fresh = digests is None
    if digests is None:
        digests = _hash_file(path, with_md5=need_md5)
    got_sha, got_md5 = digests
    md5_matches = md5_prefix is None or (got_md5 is not None and got_md5.startswith(md5_prefix.lower()))
    if expected_sha is not None and got_sha != expected_sha:
        note = ""
        if md5_prefix is not None:
            # Meta's own MD5 prefix tells a wrong expected hash from a bad file.
            note = (
                f" (its MD5 {got_md5} does start with {md5_prefix} as its name says, so the expected sha256 "
                "may be the wrong one)"
                if md5_matches
                else f" (its MD5 {got_md5} does not start with {md5_prefix} as its name says either)"
            )
        raise ChecksumMismatch(f"sha256 check failed for {path}: expected {expected_sha}, got {got_sha}{note}")
    if not md5_matches:
        raise ChecksumMismatch(
            f"md5 prefix check failed for {path}: the file name says its MD5 starts with {md5_prefix}, got {got_md5}"
        )
    if use_sidecar and fresh:
        with contextlib.suppress(FileNotFoundError):
            after = path.stat()
            # Cache only if the file did not change while it was being hashed.
            if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
                _write_sidecar(path, after, got_sha, got_md5)
    return got_sha, got_md5


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise CheckpointError(f"{sha256!r} is not a sha256 (64 hex digits)", field="checkpoint_sha256")
    return value


# ---- sidecar hash cache ---------------------------------------------------------------------------------
# Hashing a 2.5 GB checkpoint takes seconds on every replica start; `<file>.sha256` remembers the hash for
# the file's (size, mtime_ns), so any rewrite of the file invalidates it.


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path, stat: os.stat_result, *, need_md5: bool) -> tuple[str, str | None] | None:
    try:
        record = json.loads(_sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    sha, md5 = record.get("sha256"), record.get("md5")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        return None
    if not isinstance(md5, str):
        md5 = None
    if need_md5 and md5 is None:
        return None
    return sha, md5


def _write_sidecar(path: Path, stat: os.stat_result, sha256: str, md5: str | None) -> None:
    sidecar = _sidecar_path(path)
    record = {"sha256": sha256, "md5": md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, sidecar)
    except OSError as exc:
        # A read-only checkpoint directory only costs a rehash next time.
        log.debug("cannot cache the hash of %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


# ---- download -------------------------------------------------------------------------------------------


class _TransientError(Exception):
    """A failure worth retrying: the network, a 5xx, or a transfer cut short."""


@contextlib.contextmanager
def _exclusive_lock(dest: Path) -> Iterator[None]:
    """Serialise work on `dest` across processes (and threads: each call opens its own file description).

    The lock file is left behind on purpose: deleting it would let a third process lock a new inode while
    the second still holds the old one.
    """
    fd = os.open(dest.with_name(dest.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process working on %s", dest)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    with _exclusive_lock(dest):
        _download_locked(
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


def _download_locked(
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
    _normalise_sha256(sha256)  # a malformed expectation should fail before gigabytes move, not after
    part = dest.with_suffix(dest.suffix + ".part")
    shown = _display_url(url)
    failures = 0
    log.info("downloading %s to %s", shown, dest)
    # identity encoding: byte ranges must count file bytes, not compressed ones.
    with httpx.Client(timeout=timeout_s, follow_redirects=True, headers={"Accept-Encoding": "identity"}) as client:
        while True:
            try:
                if _fetch_into(client, url, part, size_bytes=size_bytes, progress=progress, label=dest.name):
                    break
            except _TransientError as exc:
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"downloading {shown} failed after {failures} attempts ({exc}); "
                        f"{part} is kept and the next attempt resumes it"
                    ) from exc
                delay = retry_backoff_s * 2 ** (failures - 1)
                log.warning(
                    "download of %s interrupted (%s); retry %d/%d in %.1fs",
                    shown,
                    exc,
                    failures,
                    retries,
                    delay,
                )
                time.sleep(delay)
    try:
        digests = _verify(part, sha256=sha256, size_bytes=size_bytes, md5_prefix=md5_prefix, use_sidecar=False)
    except ChecksumMismatch:
        # Resuming wrong bytes can never succeed: the next attempt must start from zero.
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _write_sidecar(dest, dest.stat(), *digests)
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
                mode = "ab"
            elif status == 200:
                if offset:
                    log.info("%s ignored the Range request; restarting %s from zero", shown, label)
                offset = 0
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                mode = "wb"
            elif status in (408, 429) or status >= 500:
                raise _TransientError(f"HTTP {status}")
            else:
                raise DownloadError(f"GET {shown} returned HTTP {status}")
            if total is not None and size_bytes is not None and total != size_bytes:
                # Fail before moving gigabytes of the wrong file.
                part.unlink(missing_ok=True)
                raise ChecksumMismatch(
                    f"size check failed for {shown}: expected {size_bytes} bytes, the server reports {total}"
                )
            expected_total = total if total is not None else size_bytes
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
    except httpx.TransportError as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    received = part.stat().st_size
    if expected_total is not None and received < expected_total:
        raise _TransientError(f"connection closed after {received} of {expected_total} bytes")
    return True


# ---- resolution -----------------------------------------------------------------------------------------


def resolve_checkpoint(
    model_type: str,
    *,
    checkpoint: str | Path | None,
    sha256: str | None,
    cache_dir: Path,
    progress: bool = True,
    url: str | None = None,
) -> tuple[Path, str]:
    """The verified checkpoint file for `model_type` and its sha256.

    A local `checkpoint` is checked against `sha256` when given, else against the registry when its name is
    the official file name, else only hashed; it is never modified or deleted. Without one, the official
    file is taken from `cache_dir`, or downloaded there (from `url` when given, e.g. a mirror) when missing
    or failing verification. `sha256` overrides the registry's hash (and its size, which comes from the same
    tables). Hashes are cached in `<file>.sha256` sidecars so restarts do not rehash gigabytes.
    """
    expected_sha = _normalise_sha256(sha256)
    if checkpoint is not None:
        return _resolve_local(model_type, Path(checkpoint).expanduser(), expected_sha)

    info = OFFICIAL_CHECKPOINTS.get(model_type)
    if info is None:
        raise CheckpointError(
            f"model type {model_type!r} has no official checkpoint (official: "
            f"{', '.join(OFFICIAL_CHECKPOINTS)}); a checkpoint path is needed",
            field="checkpoint",
        )
    from_registry = expected_sha is None
    want_sha = info.sha256 if from_registry else expected_sha
    # The registry's size and MD5 prefix describe the official file; a user's hash may name another one.
    want_size = info.size_bytes if from_registry else None
    want_md5 = info.md5_prefix if from_registry else None
    dest = cache_dir / info.filename
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One lock around check-and-download: a second process waits, then finds the first one's file.
    with _exclusive_lock(dest):
        if dest.exists():
            try:
                digest = verify_checkpoint(
                    dest, sha256=want_sha, size_bytes=want_size, md5_prefix=want_md5, use_sidecar=True
                )
                return dest, digest
            except ChecksumMismatch as exc:
                log.warning("cached %s fails verification (%s); downloading it again", dest, exc.reason)
                dest.unlink()
                _sidecar_path(dest).unlink(missing_ok=True)
        try:
            digests = _download_locked(
                url or info.url,
                dest,
                sha256=want_sha,
                size_bytes=want_size,
                md5_prefix=want_md5,
                progress=progress,
            )
        except ChecksumMismatch as exc:
            if from_registry:
                raise ChecksumMismatch(exc.reason + _REGISTRY_HINT) from exc
            raise
    return dest, digests[0]


def _resolve_local(model_type: str, path: Path, expected_sha: str | None) -> tuple[Path, str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file", field="checkpoint")
    official = _OFFICIAL_BY_FILENAME.get(path.name)
    if official is not None and official.model_type != model_type:
        raise CheckpointError(
            f"{path.name} is the official {official.model_type} checkpoint, not one for {model_type!r}",
            field="checkpoint",
        )
    if expected_sha is not None:
        return path, verify_checkpoint(path, sha256=expected_sha, size_bytes=None, use_sidecar=True)
    if official is None:
        # Our own or fine-tuned weights: nothing to compare with, but the hash still names the model.
        return path, verify_checkpoint(path, sha256=None, size_bytes=None, use_sidecar=True)
    try:
        digest = verify_checkpoint(
            path,
            sha256=official.sha256,
            size_bytes=official.size_bytes,
            md5_prefix=official.md5_prefix,
            use_sidecar=True,
        )
    except ChecksumMismatch as exc:
        raise ChecksumMismatch(exc.reason + _REGISTRY_HINT) from exc
    return path, digest
