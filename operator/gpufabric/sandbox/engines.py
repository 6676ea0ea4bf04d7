"""Simulated inference engines: for every Running pod of a replica, an HTTP server at the pod's own (loopback)
address and the workload's metrics port, answering the metrics path with token counters under the names the
workload's engine uses (vLLM's, SGLang's or MindIE's, or the workload's overrides) — so the operator scrapes
them exactly as it scrapes real engines, over real HTTP.

Counters grow at the rate `traffic.serve` gives each replica; rank 0 of a replica serves (other ranks of a
gang run workers, as the rendered pods say). A pod on a failed node stops answering, as the machine would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gpufabric.sandbox.traffic import Served


@dataclass
class Counters:
    """One engine's token counters, advanced at its current rates between reads."""

    prompt_counter: str
    generation_counter: str
    waiting_gauge: str
    model: str
    rates: Served = field(default_factory=lambda: Served(0.0, 0.0, 0.0))
    prompt: float = 0.0
    generation: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def advance(self) -> None:
        now = time.monotonic()
        self.prompt += self.rates.prompt * (now - self.at)
        self.generation += self.rates.generation * (now - self.at)
        self.at = now

    def set_rates(self, rates: Served) -> None:
        self.advance()
        self.rates = rates

    def page(self) -> str:
        self.advance()
        labels = f'model_name="{self.model}"'
        return (
            f"# TYPE {self.prompt_counter} counter\n"
            f"{self.prompt_counter}{{{labels}}} {self.prompt:.1f}\n"
            f"# TYPE {self.generation_counter} counter\n"
            f"{self.generation_counter}{{{labels}}} {self.generation:.1f}\n"
            f"# TYPE {self.waiting_gauge} gauge\n"
            f"{self.waiting_gauge}{{{labels}}} {self.rates.waiting:g}\n"
        )


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    path: str


class EngineFarm:
    """The servers, one listening socket per pod, all on one aiohttp application."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._sites: dict[str, tuple[Endpoint, web.TCPSite]] = {}  # pod uid -> where it listens
        self._by_socket: dict[tuple[str, int], tuple[str, Counters]] = {}  # (address, port) -> (path, counters)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()

    async def close(self) -> None:
        for uid in list(self._sites):
            await self.stop_engine(uid)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> set[str]:
        return set(self._sites)

    async def start_engine(self, uid: str, endpoint: Endpoint, counters: Counters) -> str | None:
        """Listen at the pod's address; why it cannot (another program holds the address), or None."""
        assert self._runner is not None, "start() first"
        site = web.TCPSite(self._runner, endpoint.address, endpoint.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            return f"cannot listen on {endpoint.address}:{endpoint.port}: {error.strerror or error}"
        self._sites[uid] = (endpoint, site)
        self._by_socket[(endpoint.address, endpoint.port)] = (endpoint.path, counters)
        return None

    async def stop_engine(self, uid: str) -> None:
        endpoint, site = self._sites.pop(uid)
        self._by_socket.pop((endpoint.address, endpoint.port), None)
        with contextlib.suppress(Exception):  # a site whose socket is already gone has nothing to stop
            await site.stop()

    def counters(self, uid: str) -> Counters | None:
        found = self._sites.get(uid)
        if found is None:
            return None
        endpoint = found[0]
        entry = self._by_socket.get((endpoint.address, endpoint.port))
        return entry[1] if entry else None

    async def _answer(self, request: web.Request) -> web.Response:
        sockname: Any = request.transport.get_extra_info("sockname") if request.transport else None
        entry = self._by_socket.get((sockname[0], sockname[1])) if sockname else None
        if entry is None:
            # The engine stopped (its node failed) while a client kept a connection open: as with a machine
            # that is gone, the connection drops; nobody answers.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable
        if request.path != entry[0]:
            return web.Response(status=404, text="not found\n")
        await asyncio.sleep(0)  # let rates set in the same loop turn land first
        return web.Response(text=entry[1].page(), content_type="text/plain")
