"""ReplicaPresence: a deployment still being deployed is waited for; one that lost its replicas (UNHEALTHY), or
that this process saw serving and has none serving, is refused at once, and calls already waiting are given up.
The count is the function the ingress passes it (in production: the controller's serving replicas and status), here
a list of answers read in turn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from deployments.replica_presence import Presence, ReplicaPresence
from sam_core.errors import EncoderUnavailable

POLL_S = 0.02


def counts(*answers: Presence) -> Iterator[Presence]:
    yield from answers
    while True:
        yield answers[-1]


async def answer_after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


class Response:
    """The part of a DeploymentResponse the presence uses: awaitable, cancellable."""

    def __init__(self, seconds: float) -> None:
        self.task = asyncio.ensure_future(answer_after(seconds, "embedded"))
        self.cancelled = False

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


def test_a_deployment_still_starting_is_waited_for() -> None:
    """Just deployed: 0 serving (its replica STARTING) for a while, then 1. A call made meanwhile is answered."""

    async def scenario() -> str:
        answers = counts(*[Presence(0, deploying=True)] * 3, Presence(1, deploying=False))
        presence = ReplicaPresence(lambda: next(answers), poll_s=POLL_S)
        first: str = await presence.call(Response(0.01), "encoder")
        await asyncio.sleep(3 * POLL_S)  # polls that still say 0
        second: str = await presence.call(Response(0.2), "encoder")  # waits while 0, answered after 1
        return first + " " + second

    assert asyncio.run(scenario()) == "embedded embedded"


def test_after_a_replica_served_none_serving_refuses_at_once_and_gives_up_waiting_calls() -> None:
    async def scenario() -> tuple[str, bool]:
        answers = counts(*[Presence(1, deploying=False)] * 5, Presence(0, deploying=True))
        presence = ReplicaPresence(lambda: next(answers), poll_s=POLL_S)
        waiting = Response(10.0)
        with pytest.raises(EncoderUnavailable, match="went away during the request"):
            await presence.call(waiting, "encoder")
        refused = Response(0.01)
        with pytest.raises(EncoderUnavailable, match="no encoder replica is running") as caught:
            await presence.call(refused, "encoder")
        return caught.value.reason, waiting.cancelled and refused.cancelled

    reason, cancelled = asyncio.run(scenario())
    assert "retry shortly" in reason
    assert cancelled


def test_a_deployment_that_lost_its_replicas_is_refused_in_a_process_that_never_saw_one() -> None:
    """Another ingress replica, first used after the encoder's node was lost: 0 serving, UNHEALTHY."""

    async def scenario() -> None:
        presence = ReplicaPresence(lambda: Presence(0, deploying=False), poll_s=POLL_S)
        with pytest.raises(EncoderUnavailable, match="went away during the request"):
            await presence.call(Response(10.0), "encoder")  # unknown when sent; the first poll gives it up
        with pytest.raises(EncoderUnavailable, match="no encoder replica is running"):
            await presence.call(Response(0.01), "encoder")

    asyncio.run(scenario())
