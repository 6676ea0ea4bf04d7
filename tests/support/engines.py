"""Simulated serving engines: one real HTTP server on 127.0.0.1 answering `/pods/<namespace>/<name>/metrics`
in vLLM's exposition format, with counters that grow at a rate the test sets (and can change), a queue
gauge, and misbehaviours on request: garbage, truncated text, HTTP 500, hanging, missing counters,
counter resets."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Engine:
    prompt_rate: float = 0.0
    generation_rate: float = 0.0
    waiting: float = 0.0
    # "", "garbage", "truncated", "error", "hang", "missing"
    misbehave: str = ""
    prompt: float = 0.0
    generation: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def advance(self) -> None:
        now = time.monotonic()
        self.prompt += self.prompt_rate * (now - self.at)
        self.generation += self.generation_rate * (now - self.at)
        self.at = now

    def set_rates(self, prompt: float, generation: float, waiting: float = 0.0) -> None:
        self.advance()
        self.prompt_rate, self.generation_rate, self.waiting = prompt, generation, waiting

    def reset(self) -> None:
        """The engine restarts: its counters start again from zero."""
        self.advance()
        self.prompt = self.generation = 0.0

    def page(self) -> str:
        self.advance()
        return (
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{model_name="m"}} {self.prompt}\n'
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="m"}} {self.generation}\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
        )


class Engines:
    """The server. `engine(pod)` creates or returns the simulated engine behind a pod ("namespace/name")."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}
        self.default = Engine
        self.url = ""
        self._runner: web.AppRunner | None = None
        # Set when the server closes: a hanging engine then answers, so shutdown does not wait it out.
        self._closing = asyncio.Event()

    def engine(self, pod: str) -> Engine:
        return self.engines.setdefault(pod, self.default())

    async def _serve(self, request: web.Request) -> web.Response:
        engine = self.engine(f"{request.match_info['namespace']}/{request.match_info['name']}")
        if engine.misbehave == "hang":
            await self._closing.wait()  # longer than any scrape timeout; over when the test ends
        if engine.misbehave == "error":
            return web.Response(status=500, text="internal error")
        if engine.misbehave == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>")
        page = engine.page()
        if engine.misbehave == "truncated":
            page = page[: len(page) // 2]
        if engine.misbehave == "missing":
            page = "\n".join(line for line in page.splitlines() if "generation" not in line) + "\n"
        return web.Response(text=page, content_type="text/plain")

    async def __aenter__(self) -> Engines:
        app = web.Application()
        app.router.add_get("/pods/{namespace}/{name}/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # aiohttp exposes the bound port only through the server's sockets
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
