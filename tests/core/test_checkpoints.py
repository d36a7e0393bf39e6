"""Checkpoint registry, download and verification, against a local HTTP server serving random bytes."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sam_core.errors import CheckpointError, ChecksumMismatch, DownloadError
from sam_core.model import verify
from sam_core.model.checkpoints import resolve_checkpoint
from sam_core.model.download import download_checkpoint, exclusive_lock
from sam_core.model.registry import OFFICIAL_CHECKPOINTS
from sam_core.model.verify import sha256_file, verify_checkpoint

PAYLOAD_BYTES = 3 * 1024 * 1024 + 4321  # not a multiple of any chunk size
VIT_B_FILENAME = OFFICIAL_CHECKPOINTS["vit_b"].filename


# ---- a checkpoint server with faults on demand ----------------------------------------------------------


@dataclass
class CheckpointServer:
    """What the server serves, which faults it injects, and what it saw."""

    payload: bytes
    url: str = ""
    ignore_range: bool = False
    corrupt: bool = False
    not_found: bool = False
    drops_left: int = 0  # the next N responses are cut off halfway through the body
    delay_s: float = 0.0
    range_headers: list[str | None] = field(default_factory=list)  # one entry per request
    bytes_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: CheckpointServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.range_headers.append(range_header)
            drop = state.drops_left > 0
            state.drops_left -= int(drop)
        if state.delay_s:
            threading.Event().wait(state.delay_s)
        if state.not_found:
            self._send_empty(404)
            return
        body = state.payload
        if state.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start, status = 0, 200
        if range_header and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, f"unexpected Range header {range_header!r}"
            start, status = int(match.group(1)), 206
            if start >= len(body):
                self._send_empty(416, {"Content-Range": f"bytes */{len(body)}"})
                return
        chunk = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        sent = chunk[: len(chunk) // 2] if drop else chunk
        try:
            self.wfile.write(sent)
        except (BrokenPipeError, ConnectionResetError):
            return
        with state.lock:
            state.bytes_served += len(sent)
        if drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[CheckpointServer]:
    state = CheckpointServer(payload=os.urandom(PAYLOAD_BYTES))
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/{VIT_B_FILENAME}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _download(server: CheckpointServer, dest: Path, **overrides: object) -> Path:
    options: dict[str, object] = {
        "sha256": server.sha256,
        "size_bytes": len(server.payload),
        "progress": False,
        "retry_backoff_s": 0.0,
        **overrides,
    }
    return download_checkpoint(server.url, dest, **options)  # type: ignore[arg-type]


def _part(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


# ---- download ------------------------------------------------------------------------------------------


def test_download_writes_the_verified_file_at_dest(server: CheckpointServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"

    assert _download(server, dest) == dest

    assert dest.read_bytes() == server.payload
    assert not _part(dest).exists()
    assert server.range_headers == [None]


def test_download_refuses_a_sha256_mismatch_and_leaves_no_file(server: CheckpointServer, tmp_path: Path) -> None:
    server.corrupt = True
    dest = tmp_path / "weights.pth"

    with pytest.raises(ChecksumMismatch, match="sha256 check failed") as caught:
        _download(server, dest)

    assert server.sha256 in str(caught.value)
    assert hashlib.sha256(b"\x00").hexdigest() not in str(caught.value)
    assert not dest.exists()
    assert not _part(dest).exists(), "wrong bytes must not be kept for resuming"


def test_download_refuses_a_size_mismatch_naming_the_size_check(server: CheckpointServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    wrong_size = len(server.payload) + 1

    with pytest.raises(ChecksumMismatch, match="size check failed") as caught:
        _download(server, dest, size_bytes=wrong_size)

    assert str(wrong_size) in str(caught.value)
    assert str(len(server.payload)) in str(caught.value)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_download_resumes_a_partial_file_with_a_range_request(server: CheckpointServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    already = 1024 * 1024
    _part(dest).write_bytes(server.payload[:already])  # left by an interrupted earlier run

    _download(server, dest)

    assert dest.read_bytes() == server.payload
    assert server.range_headers == [f"bytes={already}-"]
    assert server.bytes_served == len(server.payload) - already
    assert server.bytes_served < 2 * len(server.payload)


def test_download_restarts_from_zero_when_the_server_ignores_range(server: CheckpointServer, tmp_path: Path) -> None:
    server.ignore_range = True
    dest = tmp_path / "weights.pth"
    _part(dest).write_bytes(server.payload[: 1024 * 1024])

    _download(server, dest)

    assert dest.read_bytes() == server.payload
    assert server.range_headers == ["bytes=1048576-"]
    assert server.bytes_served == len(server.payload)


def test_download_retries_after_a_dropped_connection_and_resumes(server: CheckpointServer, tmp_path: Path) -> None:
    server.drops_left = 2
    dest = tmp_path / "weights.pth"

    _download(server, dest, retries=3)

    assert dest.read_bytes() == server.payload
    assert len(server.range_headers) == 3
    assert server.range_headers[0] is None
    assert all(header and header.startswith("bytes=") for header in server.range_headers[1:])
    assert server.bytes_served < 2 * len(server.payload)


def test_download_gives_up_after_its_retries_keeping_only_the_part_file(
    server: CheckpointServer, tmp_path: Path
) -> None:
    server.drops_left = 100
    dest = tmp_path / "weights.pth"

    with pytest.raises(DownloadError, match="after 2 attempts"):
        _download(server, dest, retries=1)

    assert len(server.range_headers) == 2
    assert not dest.exists()
    assert 0 < _part(dest).stat().st_size < len(server.payload), "kept for the next attempt to resume"


def test_download_retries_wait_twice_as_long_each_time(
    server: CheckpointServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.drops_left = 3
    dest = tmp_path / "weights.pth"

    with caplog.at_level(logging.WARNING, logger="sam_core.model.download"):
        _download(server, dest, retries=3, retry_backoff_s=0.1)

    waits = [float(m) for m in re.findall(r"retry \d/3 in ([0-9.]+)s", caplog.text)]
    assert waits == [0.1, 0.2, 0.4]
    assert dest.read_bytes() == server.payload


def test_the_download_lock_holds_across_processes(tmp_path: Path) -> None:
    """Another process (not only another thread) waits for the lock on the same file."""
    dest = tmp_path / "weights.pth"
    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sam_core.model.download import exclusive_lock\n"
        "with exclusive_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(1.0)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", holder, str(dest)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with exclusive_lock(dest):
            waited = time.monotonic() - started
    finally:
        process.wait(timeout=10)
    assert waited > 0.5, f"the lock was taken after {waited:.2f} s while another process held it"


def test_download_of_a_missing_url_raises_download_error(server: CheckpointServer, tmp_path: Path) -> None:
    server.not_found = True
    dest = tmp_path / "weights.pth"

    with pytest.raises(DownloadError, match="404"):
        _download(server, dest)

    assert len(server.range_headers) == 1, "a 404 is not retried"
    assert not dest.exists()


def test_download_of_a_complete_part_answered_416_just_verifies_it(server: CheckpointServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    _part(dest).write_bytes(server.payload)

    _download(server, dest, size_bytes=None)  # unknown size: only the server can say the part is complete

    assert dest.read_bytes() == server.payload
    assert server.bytes_served == 0


# ---- resolve: the cache directory ----------------------------------------------------------------------


def _resolve_vit_b(server: CheckpointServer, cache_dir: Path) -> tuple[Path, str]:
    return resolve_checkpoint(
        "vit_b", checkpoint=None, sha256=server.sha256, cache_dir=cache_dir, progress=False, url=server.url
    )


def test_resolve_downloads_a_missing_official_checkpoint_into_the_cache_dir(
    server: CheckpointServer, tmp_path: Path
) -> None:
    path, sha256 = _resolve_vit_b(server, tmp_path / "cache")

    assert path == tmp_path / "cache" / VIT_B_FILENAME
    assert path.read_bytes() == server.payload
    assert sha256 == server.sha256


def test_resolve_does_not_download_an_existing_valid_file(server: CheckpointServer, tmp_path: Path) -> None:
    (tmp_path / VIT_B_FILENAME).write_bytes(server.payload)

    path, sha256 = _resolve_vit_b(server, tmp_path)

    assert (path, sha256) == (tmp_path / VIT_B_FILENAME, server.sha256)
    assert server.range_headers == [], "the server saw a request"


def test_resolve_replaces_an_existing_corrupt_file(server: CheckpointServer, tmp_path: Path) -> None:
    (tmp_path / VIT_B_FILENAME).write_bytes(os.urandom(len(server.payload)))

    path, sha256 = _resolve_vit_b(server, tmp_path)

    assert path.read_bytes() == server.payload
    assert sha256 == server.sha256
    assert server.range_headers == [None]


def test_concurrent_resolves_download_once(server: CheckpointServer, tmp_path: Path) -> None:
    server.delay_s = 0.3  # keeps the first download in flight while the second one starts
    results: list[tuple[Path, str]] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(_resolve_vit_b(server, tmp_path))
        except BaseException as exc:  # noqa: BLE001 - a thread's error is otherwise lost; checked below
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
    assert results == [(tmp_path / VIT_B_FILENAME, server.sha256)] * 2
    assert len(server.range_headers) == 1


def test_resolve_explains_a_registry_mismatch_and_how_to_override_it(server: CheckpointServer, tmp_path: Path) -> None:
    # No user hash: the registry's vit_b size applies, and our random payload is not vit_b.
    with pytest.raises(ChecksumMismatch, match="size check failed") as caught:
        resolve_checkpoint("vit_b", checkpoint=None, sha256=None, cache_dir=tmp_path, progress=False, url=server.url)

    assert "checkpoint_sha256" in str(caught.value)
    assert not (tmp_path / VIT_B_FILENAME).exists()


# ---- resolve: local checkpoint paths -------------------------------------------------------------------


def test_resolve_refuses_a_local_checkpoint_with_a_wrong_user_sha256(tmp_path: Path) -> None:
    local = tmp_path / "my_weights.pth"
    local.write_bytes(os.urandom(4096))
    wrong = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ChecksumMismatch, match="sha256 check failed") as caught:
        resolve_checkpoint("vit_b", checkpoint=local, sha256=wrong, cache_dir=tmp_path / "cache")

    assert wrong in str(caught.value)
    assert local.exists(), "a user's own file is never deleted"


def test_resolve_hashes_a_local_checkpoint_without_expectations(tmp_path: Path) -> None:
    local = tmp_path / "my_weights.pth"
    local.write_bytes(os.urandom(4096))

    path, sha256 = resolve_checkpoint("vit_tiny", checkpoint=str(local), sha256=None, cache_dir=tmp_path)

    assert (path, sha256) == (local, hashlib.sha256(local.read_bytes()).hexdigest())


def test_resolve_checks_a_local_file_with_an_official_name_against_the_registry(tmp_path: Path) -> None:
    local = tmp_path / VIT_B_FILENAME
    local.write_bytes(os.urandom(4096))

    with pytest.raises(ChecksumMismatch, match="size check failed"):
        resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)


def test_resolve_refuses_an_official_file_for_another_model_type(tmp_path: Path) -> None:
    local = tmp_path / OFFICIAL_CHECKPOINTS["vit_h"].filename
    local.write_bytes(b"x")

    with pytest.raises(CheckpointError, match="official vit_h checkpoint"):
        resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)


def test_resolve_uses_the_sidecar_hash_instead_of_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "my_weights.pth"
    local.write_bytes(os.urandom(4096))
    hash_calls = _count_hashing(monkeypatch)

    first = resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)
    second = resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)

    assert first == second
    assert hash_calls == [local], "the second resolve rehashed"
    assert (tmp_path / "my_weights.pth.sha256").exists()


def test_sidecar_hash_is_invalidated_when_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "my_weights.pth"
    local.write_bytes(os.urandom(4096))
    _, old_sha = resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)
    before = local.stat()
    local.write_bytes(os.urandom(4096))  # same size
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    hash_calls = _count_hashing(monkeypatch)

    with pytest.raises(ChecksumMismatch, match="sha256 check failed"):
        resolve_checkpoint("vit_b", checkpoint=local, sha256=old_sha, cache_dir=tmp_path)
    _, new_sha = resolve_checkpoint("vit_b", checkpoint=local, sha256=None, cache_dir=tmp_path)

    assert new_sha == hashlib.sha256(local.read_bytes()).hexdigest() != old_sha
    assert len(hash_calls) == 2, "a failed verification is not cached, a successful one is"


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real_hash_file = verify._hash_file

    def counting_hash_file(path: Path, *, with_md5: bool, chunk: int = verify.HASH_CHUNK_BYTES) -> tuple:
        calls.append(path)
        return real_hash_file(path, with_md5=with_md5, chunk=chunk)

    monkeypatch.setattr(verify, "_hash_file", counting_hash_file)
    return calls


# ---- verification and the registry ---------------------------------------------------------------------


def test_verify_checks_the_md5_prefix_that_the_file_name_carries(tmp_path: Path) -> None:
    local = tmp_path / "weights.pth"
    local.write_bytes(os.urandom(4096))
    md5 = hashlib.md5(local.read_bytes()).hexdigest()
    wrong_prefix = f"{(int(md5[:6], 16) + 1) % 0x1000000:06x}"

    assert verify_checkpoint(local, sha256=None, size_bytes=None, md5_prefix=md5[:6]) == sha256_file(local)
    with pytest.raises(ChecksumMismatch, match="md5 prefix check failed"):
        verify_checkpoint(local, sha256=None, size_bytes=None, md5_prefix=wrong_prefix)


def test_registry_lists_the_official_checkpoints() -> None:
    assert set(OFFICIAL_CHECKPOINTS) == {"vit_h", "vit_l", "vit_b"}
    for model_type, info in OFFICIAL_CHECKPOINTS.items():
        assert info.model_type == model_type
        assert re.fullmatch(rf"sam_{model_type}_[0-9a-f]{{6}}\.pth", info.filename)
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything/{info.filename}"
        assert info.sha256 is not None
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
        assert info.size_bytes is not None
        assert info.size_bytes > 100_000_000
        assert info.md5_prefix == info.filename[-10:-4]


def test_unknown_model_type_without_a_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint path is needed") as caught:
        resolve_checkpoint("vit_tiny", checkpoint=None, sha256=None, cache_dir=tmp_path)

    assert caught.value.field == "checkpoint"
