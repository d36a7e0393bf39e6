"""The one local `redis-server` launcher: what `sam-serve run` starts when no Redis is given, and what the tests
and benchmarks start for themselves. No persistence, LRU eviction under `maxmemory`, 127.0.0.1 only.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sam_core.errors import ConfigurationError

if TYPE_CHECKING:
    import redis

REDIS_PING_TIMEOUT_S = 1.0
REDIS_START_DEADLINE_S = 10.0
REDIS_STOP_TIMEOUT_S = 5.0
DEFAULT_MAXMEMORY = "1gb"


def redis_answers(url: str) -> bool:
    """True when a Redis server at `url` answers PING within REDIS_PING_TIMEOUT_S."""
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_timeout=REDIS_PING_TIMEOUT_S, socket_connect_timeout=REDIS_PING_TIMEOUT_S
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (it may be taken before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A Popen preexec_fn that has the child SIGTERMed when this process dies, even by SIGKILL (Linux only).

    prctl is looked up here, before the fork, so the child only makes one foreign call before exec (what
    Ray does for its own processes; preexec_fn must not take locks another thread may hold).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalRedis:
    """A private `redis-server` child on 127.0.0.1: no persistence, LRU eviction under `maxmemory`.

    Without a `port` it takes a free one at the first start (another one if that is taken meanwhile); once
    started, `stop()` and `start()` keep the port, so fault tests can take the server away and bring it back
    at the same URL. It runs in its own session, so a Ctrl-C in the terminal reaches only the parent (which
    stops it in order); on Linux it also dies with its parent if that is killed outright.

    Args:
        executable: the `redis-server` binary; None looks it up on PATH (ConfigurationError if absent).
        port: a fixed port, or None for a free one.
        maxmemory: Redis's memory bound (`1gb`, `64mb`, ...).
        workdir: where its log goes; None: a temporary folder removed by `close()`.
        password: asked of every client (`--requirepass`, on its command line: tests and local use), and
            carried in `url`; None: none.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        port: int | None = None,
        maxmemory: str = DEFAULT_MAXMEMORY,
        workdir: Path | None = None,
        password: str | None = None,
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise ConfigurationError("redis-server is not on PATH (scripts/bootstrap.sh installs it)")
        self.executable = found
        self.port = port or 0
        self.maxmemory = maxmemory
        self.password = password
        self._tempdir = None if workdir is not None else tempfile.TemporaryDirectory(prefix="sam-serve-redis-")
        self.workdir = workdir if workdir is not None else Path(self._tempdir.name)  # type: ignore[union-attr]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def client(self) -> redis.Redis:
        """A synchronous client (set-up, inspection); close it after use."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2.0)

    def start(self, attempts: int = 3) -> None:
        """Start (a no-op when running) and return once it answers PING.

        A port chosen here and taken meanwhile means another try on another port; a known port is kept.
        """
        if self.running:
            return
        choose_port = self.port == 0
        for _ in range(attempts if choose_port else 1):
            if choose_port:
                self.port = free_port()
            self._spawn()
            deadline = time.monotonic() + REDIS_START_DEADLINE_S
            while time.monotonic() < deadline and self.running:
                if redis_answers(self.url):
                    return
                time.sleep(0.02)
            self.stop()
        if choose_port:
            self.port = 0
        tail = self.log_path.read_text(errors="replace")[-1000:] if self.log_path.exists() else ""
        raise ConfigurationError(f"{self.executable} did not start (port {self.port or 'free'}):\n{tail}")

    def _spawn(self) -> None:
        options = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--maxmemory": self.maxmemory,
            "--maxmemory-policy": "allkeys-lru",
            "--dir": str(self.workdir),
        }
        if self.password:
            options["--requirepass"] = self.password
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [self.executable, *itertools.chain.from_iterable(options.items())],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )

    def stop(self) -> None:
        """Stop the server and wait for it; killed if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=REDIS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=REDIS_STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop the server and remove its temporary folder (if it made one)."""
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
