"""One scrape cycle of the operator's token scraper over N ready pods: its wall time and the CPU it costs the
operator's process. A program, not a test (operator_scale.py runs it for each size; it also runs alone).

    .venv/bin/python benchmarks/scrape_cycle.py [--pods 100,1000,5000] [--rounds 3]

The scraper is the operator's own (`Scraper.round`: the concurrent fetch, the page reader, the tracker),
over targets as `Scraper.targets` builds them; only where they come from is fixed (N pods, each at its own
loopback address, so each is a host of its own to the HTTP client, as pod IPs are). The engines are one
aiohttp server in a child process, so its CPU is not counted: each page has the engine's token counters and
waiting gauge for vLLM, SGLang and MindIE, then synthetic histogram families up to the size of one vLLM V1
engine's page (about 44 KiB; see MAX_BODY_BYTES in controller/scraper.py), because the reader's cost is
per byte. Baseline in the same run: the same pages fetched by a bare aiohttp loop that reads the body and
does nothing else, so the reader's and tracker's share is a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from gpufabric.api.refs import Allocation, Kind, ObjectRef
from gpufabric.controller.reconciler import Reconciler
from gpufabric.controller.scraper import Scraper, ScrapeSettings
from gpufabric.placement import PriorThroughput
from gpufabric.sandbox.controlplane import free_port
from gpufabric.throughput import Reading, ScrapeProblem, ScrapeTarget, TokenTracker
from gpufabric.vendors import ACCELERATORS, Precision, Vendor

PAGE_BYTES = 44 * 1024
# Counter names as the three engines expose them (the same the workloads' defaults name).
ENGINES = {
    "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_waiting"),
    "sglang": ("sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_queue_reqs"),
}
FIRST_ADDRESS = ipaddress.IPv4Address("127.1.0.1")


def page(started: float) -> str:
    """The engines' series at a steady rate since `started`, then padding histograms to PAGE_BYTES."""
    elapsed = time.monotonic() - started
    lines = []
    for prompt, generation, waiting in ENGINES.values():
        lines += [
            f"# TYPE {prompt.removesuffix('_total')} counter",
            f'{prompt}{{model_name="m"}} {elapsed * 900:.1f}',
            f"# TYPE {generation.removesuffix('_total')} counter",
            f'{generation}{{model_name="m"}} {elapsed * 300:.1f}',
            f"# TYPE {waiting} gauge",
            f'{waiting}{{model_name="m"}} 2',
        ]
    family = 0
    while sum(len(line) + 1 for line in lines) < PAGE_BYTES:
        name = f"vllm:request_phase_{family}_seconds"
        lines.append(f"# TYPE {name} histogram")
        for bound in (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, "+Inf"):
            lines.append(f'{name}_bucket{{le="{bound}",model_name="m"}} {family * 7 + 3}')
        lines.append(f'{name}_count{{model_name="m"}} {family * 7 + 3}')
        lines.append(f'{name}_sum{{model_name="m"}} {family * 1.5:.1f}')
        family += 1
    return "\n".join(lines) + "\n"


def serve(port: int) -> None:
    started = time.monotonic()

    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=page(started), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="0.0.0.0", port=port, print=None, access_log=None)


def targets(count: int, port: int) -> list[ScrapeTarget]:
    found = []
    for index in range(count):
        engine = list(ENGINES)[index % len(ENGINES)]
        prompt, generation, waiting = ENGINES[engine]
        workload = ObjectRef(Kind.AGENT_WORKLOAD, "agents", f"w{index}")
        found.append(
            ScrapeTarget(
                pod=ObjectRef(Kind.POD, "agents", f"w{index}-0-0"),
                workload=workload,
                replica=0,
                allocation=Allocation(
                    vendor=Vendor.NVIDIA,
                    accelerator="H100-SXM5-80GB",
                    nodes=(f"n{index}",),
                    devices_per_node=1,
                    precision=Precision.FP8,
                ),
                parameters_billions=8,
                prompt_counter=prompt,
                generation_counter=generation,
                waiting_gauge=waiting,
                pod_ip=str(FIRST_ADDRESS + index),
                port=port,
                path="/metrics",
            )
        )
    return found


class FixedTargets(Scraper):
    """The operator's scraper; only its targets are given instead of read from the indexes."""

    def __init__(self, fixed: list[ScrapeTarget]) -> None:
        tracker = TokenTracker(prior=PriorThroughput(dict(ACCELERATORS)))
        super().__init__(tracker, Reconciler(kube=None), ScrapeSettings())  # type: ignore[arg-type]
        self.fixed = fixed
        self.failures = 0

    def targets(self) -> list[ScrapeTarget]:
        return self.fixed

    async def fetch(self, session: aiohttp.ClientSession, target: ScrapeTarget) -> Reading | ScrapeProblem:
        outcome = await super().fetch(session, target)
        if isinstance(outcome, ScrapeProblem):
            self.failures += 1
        return outcome


@dataclass
class Cycle:
    pods: int
    wall_s: float
    cpu_s: float
    bare_wall_s: float
    bare_cpu_s: float
    failures: int

    @property
    def core_share(self) -> float:
        """The CPU one cycle costs, as a share of one core over the default 15 s interval."""
        return self.cpu_s / ScrapeSettings().interval


async def _measure(count: int, port: int, rounds: int) -> Cycle:
    fixed = targets(count, port)
    scraper = FixedTargets(fixed)
    timeout = aiohttp.ClientTimeout(total=scraper.settings.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        walls, cpus = [], []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            await scraper.round(session)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        gate = asyncio.Semaphore(scraper.settings.concurrency)

        async def bare(target: ScrapeTarget) -> None:
            async with gate, session.get(scraper.url_for(target)) as response:
                await response.read()

        bare_walls, bare_cpus = [], []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(bare(t) for t in fixed))
            bare_walls.append(time.perf_counter() - wall)
            bare_cpus.append(time.process_time() - cpu)
    return Cycle(count, min(walls), min(cpus), min(bare_walls), min(bare_cpus), scraper.failures)


def measure(count: int, rounds: int = 3) -> Cycle:
    """The best of `rounds` cycles (the least disturbed by the rest of the machine) over `count` pods."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(port)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                asyncio.run(_probe(port))
                break
            except OSError:
                time.sleep(0.2)
        return asyncio.run(_measure(count, port, rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _probe(port: int) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        await response.read()


def table(cycles: list[Cycle]) -> str:
    lines = [
        f"{'pods':>6} {'cycle s':>8} {'cpu s':>7} {'core at 15 s':>12} {'bare cycle s':>12} {'bare cpu s':>10} "
        f"{'cpu ratio':>9} {'failures':>8}"
    ]
    for c in cycles:
        lines.append(
            f"{c.pods:>6} {c.wall_s:>8.2f} {c.cpu_s:>7.2f} {c.core_share:>11.0%} {c.bare_wall_s:>12.2f} "
            f"{c.bare_cpu_s:>10.2f} {c.cpu_s / max(c.bare_cpu_s, 1e-9):>8.1f}x {c.failures:>8}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the engines' child process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(table([measure(int(n), args.rounds) for n in args.pods.split(",")]))


if __name__ == "__main__":
    main()
