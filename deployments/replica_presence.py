"""Whether a deployment of this application has a running replica, as the Serve controller sees it, polled in the
background: a handle call to a deployment with none waits (queued in the router) until one starts, which for the
encoder on a lost GPU node may be never. The ingress refuses such calls at once with a 503 and Retry-After instead,
and gives up on calls already waiting when the last replica goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from ray import serve

from sam_core.errors import EncoderUnavailable

log = logging.getLogger("ray.serve")

T = TypeVar("T")

POLL_S = 1.0


# Replica states that serve requests: UPDATING is a running replica taking a new user_config (a rolling update).
SERVING_STATES = ("RUNNING", "UPDATING")


class Presence(NamedTuple):
    serving: int
    """Replicas that serve requests."""
    deploying: bool
    """The controller is bringing the deployment up (status UPDATING: just deployed, or a new version); a replica
    lost after it ran makes it UNHEALTHY instead."""


def presence(app: str, deployment: str) -> Presence:
    """The deployment's presence, from the controller (a blocking call: run it off the loop)."""
    status = serve.status().applications[app].deployments[deployment]
    serving = sum(int(count) for state, count in status.replica_states.items() if state in SERVING_STATES)
    return Presence(serving, status.status == "UPDATING")


class ReplicaPresence:
    """Polls `count()` every `poll_s` seconds from the first use on; `running` is None until an answer (or after
    a failed poll): unknown never refuses a request.

    None serving is "gone" unless the deployment is being deployed: a replica still starting (the app just
    deployed, its first replica loading its model) is coming, and a call waits for it as Serve's router would have
    it; after a replica ran and was lost the deployment is UNHEALTHY, its replacement may never start (a lost GPU
    node), and calls are refused. Once this process has seen one serving, none serving is "gone" whatever the
    status says.
    """

    def __init__(self, count: Callable[[], Presence], poll_s: float = POLL_S) -> None:
        self.count = count
        self.poll_s = poll_s
        self.running: int | None = None
        self.served = False
        """A replica has been seen serving since the first use."""
        self.deploying = False
        self._gone: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, deployment: str) -> ReplicaPresence:
        app = serve.get_replica_context().app_name
        return cls(lambda: presence(app, deployment))

    def _start(self) -> asyncio.Event:
        if self._gone is None:
            self._gone = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return self._gone

    async def _poll(self) -> None:
        gone = self._start()
        while True:
            try:
                self.running, self.deploying = await asyncio.to_thread(self.count)
            except Exception as exc:  # noqa: BLE001 - a controller that does not answer: unknown, not absent
                log.debug("replica presence unknown: %s", exc)
                self.running = None
            self.served = self.served or bool(self.running)
            if self.running == 0 and (self.served or not self.deploying):
                gone.set()
            else:
                gone.clear()
            await asyncio.sleep(self.poll_s)

    async def call(self, response: Any, what: str) -> T:
        """`await response` (a DeploymentResponse), unless the deployment has no running replica, now or while
        the call waits: then the call is cancelled and EncoderUnavailable raised (503, Retry-After)."""
        gone = self._start()
        if gone.is_set():
            response.cancel()
            raise EncoderUnavailable(f"no {what} replica is running: retry shortly, or send a cached image_id")
        answer: asyncio.Future[T] = asyncio.ensure_future(_awaited(response))
        watch: asyncio.Future[Any] = asyncio.ensure_future(gone.wait())
        both: set[asyncio.Future[Any]] = {answer, watch}
        done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            watch.cancel()
            return answer.result()
        response.cancel()
        answer.cancel()
        raise EncoderUnavailable(f"the last {what} replica went away during the request: retry shortly")


async def _awaited(response: Awaitable[T]) -> T:
    return await response
