"""The watch of others' pods and DRA objects against a scripted API server on loopback: what it keeps, what it
skips unparsed, and what it does on 410, 403 and 404."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web

from gpufabric.controller.clusterwatch import (
    CLAIMS,
    OTHERS_PODS,
    Connection,
    Known,
    ListWatch,
    Others,
    pods_of_others,
)

GPU = "nvidia.com/gpu"


def pod(name: str, gpus: int | None, version: int, node: str = "h1") -> dict[str, Any]:
    resources = {"limits": {GPU: str(gpus)}} if gpus else {"requests": {"cpu": "1"}}
    return {
        "metadata": {"name": name, "namespace": "training", "resourceVersion": str(version)},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": resources}]},
        "status": {"phase": "Running"},
    }


class Script:
    """What the fake API server answers: a list, then watch streams of events, one list per request."""

    def __init__(self, listed: list[dict[str, Any]], watches: list[list[dict[str, Any]]]) -> None:
        self.listed = listed
        self.watches = watches
        self.requests: list[dict[str, str]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        if self.status != 200:
            return web.json_response({"kind": "Status", "code": self.status, "message": "nope"}, status=self.status)
        if request.query.get("watch") != "true":
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": self.listed})
        response = web.StreamResponse()
        await response.prepare(request)
        for event in self.watches.pop(0) if self.watches else []:
            await response.write(json.dumps(event).encode() + b"\n")
        if not self.watches:
            await asyncio.sleep(2)  # a quiet watch that stays open a while
        return response


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Any]]:
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", script.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def run_until(watch: ListWatch[Any], done: Callable[[], bool], timeout: float = 5.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await watch.connection.close()


def login_to(url: str) -> Callable[..., kopf.ConnectionInfo]:
    return lambda **_: kopf.ConnectionInfo(server=url, token="t")


async def test_it_keeps_only_accelerator_requests_and_skips_the_rest_unparsed(serve: Any) -> None:
    script = Script(
        listed=[pod("job", 8, 5), pod("web", None, 6)],
        watches=[
            [
                {"type": "ADDED", "object": pod("other-web", None, 11)},
                {"type": "ADDED", "object": pod("job-2", 2, 12, node="h2")},
                {"type": "DELETED", "object": pod("job", 8, 13)},
                {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "20"}}},
                {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}},
            ],
            [],
        ],
    )
    url = await serve(script)
    seen: list[list[str]] = []
    watch: ListWatch[Any] = ListWatch(Connection(login_to(url)), pods_of_others({GPU}), lambda: None)
    watch.on_change = lambda: seen.append(sorted(watch.items))
    await run_until(watch, lambda: len(script.requests) >= 4)
    # the list; job-2 added; job deleted (other-web, asking for no GPU, changed nothing); the relist after 410
    assert seen == [["training/job"], ["training/job", "training/job-2"], ["training/job-2"], ["training/job"]]
    # list, watch from the list's version, 410 -> list again, watch
    assert [r.get("watch") for r in script.requests[:4]] == [None, "true", None, "true"]
    assert script.requests[1]["resourceVersion"] == "10"
    assert all(r["fieldSelector"] == OTHERS_PODS["fieldSelector"] for r in script.requests)
    assert all(r["labelSelector"] == OTHERS_PODS["labelSelector"] for r in script.requests)
    # after the relist, the list is the truth again
    assert {k: (p.node, p.requests) for k, p in watch.items.items()} == {"training/job": ("h1", ((GPU, 8),))}
    assert watch.known is Known.SYNCED


async def test_events_without_the_resource_are_not_parsed(serve: Any) -> None:
    """The prefilter: a line naming no accelerator resource is skipped, its resourceVersion still read."""
    watch = ListWatch(Connection(login_to("http://127.0.0.1:1")), pods_of_others({GPU}), lambda: None)
    line = json.dumps({"type": "ADDED", "object": pod("web", None, 42)}).encode()
    assert watch._event(line) == "42"
    assert watch.items == {}
    assert watch._event(b"{not json but no resource either}") is None
    with pytest.raises(json.JSONDecodeError):
        watch._event(b'{"type":"ADDED","object":{"nvidia.com/gpu": broken')


async def test_forbidden_is_said_once_and_leaves_holdings_unknown(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    script = Script(listed=[], watches=[])
    script.status = 403
    url = await serve(script)
    others = Others(login_to(url), lambda: None)
    with caplog.at_level(logging.INFO, logger="gpufabric"):
        await run_until(others.pods, lambda: others.pods.known is Known.FORBIDDEN)
    assert others.foreign() == ({}, False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "cannot list pods of others (nope): they are not counted until the operator may list and watch them"
    ]


async def test_a_cluster_without_dra_has_nothing_published(serve: Any) -> None:
    script = Script(listed=[], watches=[])
    script.status = 404
    url = await serve(script)
    others = Others(login_to(url), lambda: None)
    await run_until(others.claims, lambda: others.claims.known is Known.NOT_SERVED)
    assert others.dra().claims == ()
    assert CLAIMS.path == "/apis/resource.k8s.io/v1/resourceclaims"


async def test_a_new_resource_name_lists_again() -> None:
    others = Others(login_to("http://127.0.0.1:1"), lambda: None)
    others.look_for(["nvidia.com/gpu"])
    assert not others.pods._restart.is_set(), "a known resource changes nothing"
    others.look_for(["nvidia.com/vgpu"])
    assert others.pods._restart.is_set()
    assert b'"nvidia.com/vgpu"' in others.pods.collection.needles
