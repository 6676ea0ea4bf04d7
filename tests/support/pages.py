"""Real serving-engine /metrics pages (tests/throughput/pages, sources in SOURCES.md) and a scrape target for
reading them."""

from __future__ import annotations

from pathlib import Path

from gpufabric.api.refs import Allocation, Kind, ObjectRef, workload_ref
from gpufabric.engines import SGLANG
from gpufabric.throughput import ScrapeTarget
from gpufabric.vendors import Precision, Vendor

PAGES = Path(__file__).resolve().parents[1] / "throughput" / "pages"


def page(name: str) -> str:
    return (PAGES / name).read_text()


def with_engines(text: str, engines: int) -> str:
    """The page as `engines` data-parallel engines serve it: every sample once per `dp_rank` label."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            lines += [line.replace('{model_name="', f'{{dp_rank="{e}",model_name="', 1) for e in range(engines)]
    return "\n".join(lines) + "\n"


def sglang_target() -> ScrapeTarget:
    return ScrapeTarget(
        pod=ObjectRef(Kind.POD, "agents", "chat-0-0"),
        workload=workload_ref("agents", "chat"),
        replica=0,
        allocation=Allocation(Vendor.NVIDIA, "H100-SXM5-80GB", Precision.FP8, 8, ("h1",)),
        parameters_billions=8.0,
        prompt_counter=SGLANG.metrics.prompt_counter,
        generation_counter=SGLANG.metrics.generation_counter,
        waiting_gauge=SGLANG.metrics.waiting_gauge,
        pod_ip="10.0.0.1",
        port=8000,
        path="/metrics",
    )
