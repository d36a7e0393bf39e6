"""Hosts of their own on one Linux machine: a network namespace per host, each with one veth into a bridge in the
root namespace, so every host has its own IP, the machine reaches every host, and one host can be killed (every
process in it, SIGKILL) or cut off (its link down) without touching the others. Needs root and iproute2.

Used by scripts/local_cluster.py; nothing here knows about Ray or Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`, its output captured; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Network:
    """One bridge and its /24: the machine is `.1` on the bridge; host `n` is `.n` in namespace `PREFIX-NAME`."""

    prefix: str
    subnet: str  # the first three octets, e.g. "10.77.0"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def veth(self, number: int) -> str:
        """The machine's end of host `number`'s link (interface names are at most 15 characters)."""
        return f"{self.prefix}-v{number}"

    def address(self, number: int) -> str:
        return f"{self.subnet}.{number}"

    def create_bridge(self) -> None:
        if ip("link", "show", self.bridge, check=False).returncode == 0:
            return
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, number: int) -> None:
        """Namespace `name` with address `.number` on eth0 and a default route through the machine."""
        namespace, outside = self.namespace(name), self.veth(number)
        ip("netns", "add", namespace)
        ip("link", "add", outside, "type", "veth", "peer", "name", f"{outside}p")
        ip("link", "set", f"{outside}p", "netns", namespace)
        ip("-n", namespace, "link", "set", f"{outside}p", "name", "eth0")
        ip("-n", namespace, "addr", "add", f"{self.address(number)}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", self.gateway)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")

    def cut(self, number: int) -> None:
        """Drop host `number`'s link: its packets go nowhere (no reset, no refusal), as on a lost switch port."""
        ip("link", "set", self.veth(number), "down")

    def heal(self, number: int) -> None:
        ip("link", "set", self.veth(number), "up")

    def pids(self, name: str) -> list[int]:
        done = ip("netns", "pids", self.namespace(name), check=False)
        return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []

    def kill(self, name: str, timeout_s: float = 10.0) -> int:
        """SIGKILL every process in host `name` until none is left; the number killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids(name)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return len(killed)

    def remove_host(self, name: str, number: int) -> None:
        self.kill(name)
        ip("link", "del", self.veth(number), check=False)
        ip("netns", "del", self.namespace(name), check=False)

    def remove_bridge(self) -> None:
        ip("link", "del", self.bridge, check=False)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
        """Start `argv` inside host `name`, detached from this process (its own session), output to `log_path`."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(name), *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def run(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: str, timeout_s: float) -> None:
        """Run `argv` inside host `name` to its end; a failure raises with the log's last lines."""
        returncode = self.spawn(name, argv, env, log_path).wait(timeout=timeout_s)
        if returncode != 0:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                tail = "".join(log.readlines()[-15:])
            raise RuntimeError(f"{' '.join(argv[:3])} in {name} failed ({returncode}):\n{tail}")
