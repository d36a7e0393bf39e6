"""Which checkpoint file a configured model uses: a local file checked, or the official one, downloaded once.

Building models from it is `sam_core.model.build`'s job.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sam_core.errors import CheckpointError, ChecksumMismatch
from sam_core.model.download import download_locked, exclusive_lock
from sam_core.model.registry import OFFICIAL_BY_FILENAME, OFFICIAL_CHECKPOINTS
from sam_core.model.verify import normalise_sha256, sidecar_path, verify_checkpoint

log = logging.getLogger(__name__)

_REGISTRY_HINT = (
    "; the expected values come from third-party tables (Meta publishes no hashes): if you trust this file, "
    "set checkpoint_sha256 to its sha256 to override them"
)


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
    expected_sha = normalise_sha256(sha256)
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
    with exclusive_lock(dest):
        if dest.exists():
            try:
                digest = verify_checkpoint(
                    dest, sha256=want_sha, size_bytes=want_size, md5_prefix=want_md5, use_sidecar=True
                )
                return dest, digest
            except ChecksumMismatch as exc:
                log.warning("cached %s fails verification (%s); downloading it again", dest, exc.reason)
                dest.unlink()
                sidecar_path(dest).unlink(missing_ok=True)
        try:
            digests = download_locked(
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
    official = OFFICIAL_BY_FILENAME.get(path.name)
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
