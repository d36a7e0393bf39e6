"""Whether a deployment of this application has a running replica, as the Serve controller sees it, polled in the
background: a handle call to a deployment with none waits (queued in the router) until one starts, which for the
encoder on a lost GPU node may be never. The ingress refuses such calls at once with a 503 and Retry-After instead,
and gives up on calls already waiting when the last replica goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ray import serve

from sam_core.errors import EncoderUnavailable

log = logging.getLogger("ray.serve")

T = TypeVar("T")

POLL_S = 1.0


# Replica states that serve requests: UPDATING is a running replica taking a new user_config (a rolling update).
SERVING_STATES = ("RUNNING", "UPDATING")


def running_replicas(app: str, deployment: str) -> int:
    """The deployment's replicas that serve, from the controller (a blocking call: run it off the loop)."""
    states = serve.status().applications[app].deployments[deployment].replica_states
    return sum(int(count) for state, count in states.items() if state in SERVING_STATES)


class ReplicaPresence:
    """Polls `count()` every `poll_s` seconds from the first use on; `running` is None until an answer (or after
    a failed poll): unknown never refuses a request."""

    def __init__(self, count: Callable[[], int], poll_s: float = POLL_S) -> None:
        self.count = count
        self.poll_s = poll_s
        self.running: int | None = None
        self._gone: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, deployment: str) -> ReplicaPresence:
        app = serve.get_replica_context().app_name
        return cls(lambda: running_replicas(app, deployment))

    def _start(self) -> asyncio.Event:
        if self._gone is None:
            self._gone = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return self._gone

    async def _poll(self) -> None:
        gone = self._start()
        while True:
            try:
                self.running = await asyncio.to_thread(self.count)
            except Exception as exc:  # noqa: BLE001 - a controller that does not answer: unknown, not absent
                log.debug("replica presence unknown: %s", exc)
                self.running = None
            if self.running == 0:
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
