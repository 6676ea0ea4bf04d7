"""Scrape every ready replica's serving engine for its token counters, on an interval, concurrently with a
bounded pool and a per-request timeout. Whatever goes wrong with one endpoint (unreachable, slow, garbage,
missing counters) is a counted, logged failure for that endpoint only: the loop never stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gpufabric.controller.reconciler import Reconciler
from gpufabric.reconcile.ledger import replicas_of
from gpufabric.throughput import Reading, ScrapeProblem, ScrapeTarget, TokenTracker, read
from gpufabric.throughput.exposition import HTTP_ERROR, TIMEOUT, UNREACHABLE

log = logging.getLogger(__name__)
# Large enough for any engine's /metrics page; a bigger answer is not a metrics page.
MAX_BODY_BYTES = 8 * 2**20


def pod_url(target: ScrapeTarget) -> str:
    return f"http://{target.pod_ip}:{target.port}{target.path}"


@dataclass
class ScrapeSettings:
    interval: float = 15.0
    timeout: float = 5.0
    concurrency: int = 32


class Scraper:
    def __init__(
        self,
        tracker: TokenTracker,
        reconciler: Reconciler,
        settings: ScrapeSettings | None = None,
        url_for: Callable[[ScrapeTarget], str] = pod_url,
    ) -> None:
        self.tracker = tracker
        self.reconciler = reconciler
        self.settings = settings or ScrapeSettings()
        # Tests map pods to local servers through this; in a cluster it is the pod IP.
        self.url_for = url_for
        self.rounds = 0

    def targets(self) -> list[ScrapeTarget]:
        """Rank 0 of every ready replica of every valid workload."""
        state = self.reconciler.state(with_tokens=False)
        found = []
        for replica in replicas_of(state.pods):
            workload = state.workloads.get(replica.workload_key)
            if workload is None or not replica.ready:
                continue
            leader = next((p for p in replica.pods if p.rank == 0), None)
            if leader is None or not leader.ip:
                continue
            runtime = workload.spec.runtimes.get(replica.allocation.vendor)
            if runtime is None:
                continue
            metrics = workload.spec.metrics_or_default
            found.append(
                ScrapeTarget(
                    pod=leader.ref,
                    workload=replica.workload,
                    replica=replica.replica,
                    allocation=replica.allocation,
                    parameters_billions=workload.spec.model.parameters_billions,
                    prompt_counter=metrics.prompt_tokens_counter,
                    generation_counter=metrics.generation_tokens_counter,
                    waiting_gauge=metrics.waiting_requests_gauge,
                    pod_ip=leader.ip,
                    port=metrics.port_for(runtime),
                    path=metrics.path,
                )
            )
        return found

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.monotonic()
                if self.reconciler.leadership.leading:
                    try:
                        await self.round(session)
                    except Exception:  # a round must never end the loop
                        log.exception("scrape round failed")
                rest = max(0.0, self.settings.interval - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=rest)

    async def round(self, session: aiohttp.ClientSession) -> None:
        targets = self.targets()
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(target: ScrapeTarget) -> None:
            async with gate:
                outcome = await self.fetch(session, target)
            if isinstance(outcome, ScrapeProblem):
                log.warning(
                    "scrape %s (%s): %s %s", target.pod.key, self.url_for(target), outcome.reason, outcome.detail
                )
            self.tracker.observe(target, outcome, time.monotonic())

        await asyncio.gather(*(one(t) for t in targets))
        self.tracker.forget_missing(t.pod for t in targets)
        self.rounds += 1
        self.reconciler.trigger()  # status and the autoscaler may have news

    async def fetch(self, session: aiohttp.ClientSession, target: ScrapeTarget) -> Reading | ScrapeProblem:
        url = self.url_for(target)
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return ScrapeProblem(HTTP_ERROR, f"HTTP {response.status}")
                body = await response.content.read(MAX_BODY_BYTES + 1)
        except TimeoutError:
            return ScrapeProblem(TIMEOUT, f"no answer within {self.settings.timeout}s")
        except (aiohttp.ClientError, OSError) as error:
            return ScrapeProblem(UNREACHABLE, str(error)[:200])
        if len(body) > MAX_BODY_BYTES:
            return ScrapeProblem(HTTP_ERROR, "answer too large for a metrics page")
        text = body.decode("utf-8", errors="replace")
        return read(text, target.prompt_counter, target.generation_counter, target.waiting_gauge)
