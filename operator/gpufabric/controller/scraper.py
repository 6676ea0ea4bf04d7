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

from gpufabric.api.refs import ObjectRef
from gpufabric.controller.reconciler import Reconciler
from gpufabric.reconcile.ledger import replicas_of
from gpufabric.throughput import Reading, ScrapeProblem, ScrapeTarget, TokenTracker, read
from gpufabric.throughput.exposition import ACCEPT, HTTP_ERROR, TIMEOUT, TOO_LARGE, TRUNCATED, UNREACHABLE

log = logging.getLogger(__name__)
# Large enough for any engine's /metrics page (one vLLM V1 engine's is about 44 KiB, four data-parallel
# engines' about 165 KiB); a bigger answer is not a metrics page.
MAX_BODY_BYTES = 8 * 2**20


def pod_url(target: ScrapeTarget) -> str:
    return f"http://{target.pod_ip}:{target.port}{target.path}"


@dataclass
class ScrapeSettings:
    interval: float = 15.0
    timeout: float = 5.0
    concurrency: int = 32
    max_body_bytes: int = MAX_BODY_BYTES


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
        self._warned_gauge: set[ObjectRef] = set()
        # pods whose last scrape failed, with why (their problems are logged when they change)
        self._failing: dict[ObjectRef, str] = {}
        # pod -> when its page's answer began, in this round
        self._answered: dict[ObjectRef, float] = {}

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
            metrics = workload.spec.metrics_for(replica.allocation.vendor)
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
                    port=metrics.port,
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
            self._log_change(target, outcome)
            # The page's time is when its answer began (the engine renders it just before), not when it was
            # read and parsed: an engine busy serving answers /metrics seconds late, and rates over spans
            # timed by the end of each read were off by that much (12 % over 20 s, seen with a real vLLM).
            self.tracker.observe(target, outcome, self._answered.pop(target.pod, time.monotonic()))

        await asyncio.gather(*(one(t) for t in targets))
        self.tracker.forget_missing(t.pod for t in targets)
        current = {t.pod for t in targets}
        self._failing = {pod: reason for pod, reason in self._failing.items() if pod in current}
        self.rounds += 1
        self.reconciler.trigger()  # status and the autoscaler may have news

    def _log_change(self, target: ScrapeTarget, outcome: Reading | ScrapeProblem) -> None:
        """A pod's scrape problem is logged when it starts or changes, and its end once: every failure is
        counted (gpufabric_scrape_failures_total), but a log line per pod per round is thousands of lines
        every interval on a large fleet with one common problem."""
        before = self._failing.get(target.pod)
        if isinstance(outcome, ScrapeProblem):
            if before != outcome.reason:
                url = self.url_for(target)
                log.warning("scrape %s (%s): %s %s", target.pod.key, url, outcome.reason, outcome.detail)
            self._failing[target.pod] = outcome.reason
        elif before is not None:
            log.info("scrape %s: answering again after %s", target.pod.key, before)
            del self._failing[target.pod]

    async def fetch(self, session: aiohttp.ClientSession, target: ScrapeTarget) -> Reading | ScrapeProblem:
        url = self.url_for(target)
        try:
            async with session.get(url, headers={"Accept": ACCEPT}) as response:
                self._answered[target.pod] = time.monotonic()
                if response.status != 200:
                    return ScrapeProblem(HTTP_ERROR, f"HTTP {response.status}")
                body = await read_capped(response, self.settings.max_body_bytes)
        except TimeoutError:
            return ScrapeProblem(TIMEOUT, f"no answer within {self.settings.timeout}s")
        except aiohttp.ClientPayloadError as error:  # the connection closed before Content-Length bytes
            return ScrapeProblem(TRUNCATED, str(error)[:200])
        except (aiohttp.ClientError, OSError) as error:
            return ScrapeProblem(UNREACHABLE, str(error)[:200])
        if body is None:
            return ScrapeProblem(TOO_LARGE, f"more than {self.settings.max_body_bytes} bytes")
        outcome = read(
            body.decode("utf-8", errors="replace"),
            target.prompt_counter,
            target.generation_counter,
            target.waiting_gauge,
        )
        if isinstance(outcome, Reading) and outcome.gauge_missing and target.workload not in self._warned_gauge:
            # Said once per workload: without the gauge its replicas never look saturated, so nothing is learned.
            self._warned_gauge.add(target.workload)
            log.warning(
                "%s: %s does not expose %s: its replicas never count as saturated, so no throughput is learned",
                target.workload,
                url,
                target.waiting_gauge,
            )
        return outcome


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body, or None as soon as it is larger than `cap` (a metrics page is never that big).
    `response.content.read(n)` would return whatever happens to be buffered, not the body."""
    declared = response.content_length
    if declared is not None and declared > cap:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)
