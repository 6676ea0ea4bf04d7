"""The scraper over real HTTP (an aiohttp server on 127.0.0.1): whole pages however they arrive, the text
format asked for by name, a cap on the size, and cut-off answers as failures, never as readings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from gpufabric.controller.scraper import Scraper, ScrapeSettings
from gpufabric.throughput import Reading, ScrapeProblem, TokenTracker
from support.pages import page, sglang_target, with_engines

BIG_ENGINES = 24


def big_page() -> str:
    return with_engines(page("sglang-v0.4-docs.txt"), BIG_ENGINES)


class Server:
    def __init__(self) -> None:
        self.body = b""
        self.accepts: list[str] = []
        self.chunk = 4096
        self.cut_short = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.accepts.append(request.headers.get("Accept", ""))
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        response.content_length = len(self.body)
        await response.prepare(request)
        sent = self.body[: len(self.body) // 2] if self.cut_short else self.body
        for start in range(0, len(sent), self.chunk):  # dribbled out, as a busy engine does
            await response.write(sent[start : start + self.chunk])
            await asyncio.sleep(0)
        if self.cut_short:
            assert request.transport is not None
            request.transport.close()  # the connection drops before Content-Length bytes
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    app = web.Application()
    app.router.add_get("/metrics", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = cast(Any, site)._server.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


async def fetch(url: str, **settings: Any) -> Reading | ScrapeProblem:
    tracker = TokenTracker(prior=cast(Any, None))
    scraper = Scraper(tracker, cast(Any, None), ScrapeSettings(**settings), url_for=lambda _: url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return await scraper.fetch(session, sglang_target())


async def test_a_page_over_200_kb_arrives_whole(served: tuple[Server, str]) -> None:
    server, url = served
    server.body = big_page().encode()
    assert len(server.body) > 200_000
    outcome = await fetch(url)
    assert isinstance(outcome, Reading), outcome
    assert len(outcome.generation) == BIG_ENGINES
    assert sum(outcome.generation.values()) == pytest.approx(BIG_ENGINES * 7_557_572.0)
    assert server.accepts == ["text/plain;version=0.0.4;q=1.0,*/*;q=0.1"], "the text format, by name"


async def test_a_page_over_the_cap_is_too_large(served: tuple[Server, str]) -> None:
    server, url = served
    server.body = big_page().encode()
    outcome = await fetch(url, max_body_bytes=100_000)
    assert outcome == ScrapeProblem("too_large", "more than 100000 bytes")


async def test_a_connection_dropped_mid_page_is_truncated(served: tuple[Server, str]) -> None:
    server, url = served
    server.body = big_page().encode()
    server.cut_short = True
    outcome = await fetch(url)
    assert isinstance(outcome, ScrapeProblem)
    assert outcome.reason == "truncated"


def test_a_pods_scrape_problem_is_logged_when_it_starts_or_changes_not_every_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scraper = Scraper(TokenTracker(prior=cast(Any, None)), cast(Any, None), url_for=lambda _: "http://pod/metrics")
    target = sglang_target()
    unreachable = ScrapeProblem("unreachable", "connection refused")
    with caplog.at_level("INFO", logger="gpufabric.controller.scraper"):
        for outcome in (unreachable, unreachable, unreachable, ScrapeProblem("timeout", "no answer"), unreachable):
            scraper._log_change(target, outcome)
        scraper._log_change(target, Reading.single(1.0, 2.0, None))
        scraper._log_change(target, Reading.single(2.0, 3.0, None))
    said = [(r.levelname, r.getMessage().split(": ", 1)[1]) for r in caplog.records]
    assert said == [
        ("WARNING", "unreachable connection refused"),
        ("WARNING", "timeout no answer"),
        ("WARNING", "unreachable connection refused"),
        ("INFO", "answering again after unreachable"),
    ]
