"""Checkpoint verification: sha256 (and the MD5 prefix in official names) in one pass, cached in sidecars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from sam_core.errors import CheckpointError, ChecksumMismatch

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 8 * 1024 * 1024
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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
    digests = verify(path, sha256=sha256, size_bytes=size_bytes, md5_prefix=md5_prefix, use_sidecar=use_sidecar)
    return digests[0]


def verify(
    path: Path, *, sha256: str | None, size_bytes: int | None, md5_prefix: str | None, use_sidecar: bool
) -> tuple[str, str | None]:
    expected_sha = normalise_sha256(sha256)
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
                write_sidecar(path, after, got_sha, got_md5)
    return got_sha, got_md5


def normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise CheckpointError(f"{sha256!r} is not a sha256 (64 hex digits)", field="checkpoint_sha256")
    return value


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path, stat: os.stat_result, *, need_md5: bool) -> tuple[str, str | None] | None:
    try:
        record = json.loads(sidecar_path(path).read_text())
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


def write_sidecar(path: Path, stat: os.stat_result, sha256: str, md5: str | None) -> None:
    sidecar = sidecar_path(path)
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
