"""The in-process API server under a long run: time per request as its request log grows, with the log kept
whole (what tests use, and kmock 0.8's only way) against the sandbox's bounded log. A program, not a test.

    .venv/bin/python benchmarks/emulator_requests.py [--quick] [--requests 2000] [--batch 500]

(about 7 minutes on 2 cores, nearly all of it the whole log's last batches; --quick: 600 in batches of 200)

kmock 0.8 matches a request to a reaction by scanning the request log once per reaction, so each request costs
O(requests so far). The sandbox serves tens of thousands of requests in 75 s (the operator's watches and
writes, the simulated kubelets' status patches); with the whole log kept the kubelets' passes went from 0.01 s
to 7 s. Both emulators get the same mix, a pod status patch and a pod list, as the simulated kubelet sends
them; the table shows the mean time per request of each batch and the ratio (whole log / bounded log).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import kmock

from gpufabric.sandbox.emulator import FabricEmulator

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bench", "namespace": "default"},
    "spec": {"containers": [{"name": "c", "image": "i"}]},
}
BOUNDED_LOG = 16  # the sandbox's (gpufabric.sandbox.run.REQUEST_LOG)


async def batches(limit: int | None, requests: int, batch: int) -> list[float]:
    """Mean seconds per request of each batch of `batch` requests."""
    async with FabricEmulator(request_log_limit=limit) as api, kmock.Server(api) as server:
        base = str(server.url).rstrip("/")
        result = []
        async with aiohttp.ClientSession() as session:
            await session.post(f"{base}/api/v1/namespaces/default/pods", json=POD)
            status = f"{base}/api/v1/namespaces/default/pods/bench/status"
            headers = {"Content-Type": "application/merge-patch+json"}
            for start in range(0, requests, batch):
                began = time.perf_counter()
                for index in range(start, min(start + batch, requests), 2):
                    patch = {"status": {"message": str(index)}}
                    async with session.patch(status, json=patch, headers=headers) as answer:
                        assert answer.status == 200, await answer.text()
                    async with session.get(f"{base}/api/v1/namespaces/default/pods") as answer:
                        assert answer.status == 200
                result.append((time.perf_counter() - began) / batch)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600 requests in batches of 200")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    requests, batch = (600, 200) if args.quick else (args.requests, args.batch)
    whole = asyncio.run(batches(None, requests, batch))
    bounded = asyncio.run(batches(BOUNDED_LOG, requests, batch))
    print(f"{'requests served':>16}  {'whole log ms/req':>17}  {'bounded log ms/req':>19}  {'ratio':>6}")
    for index, (slow, fast) in enumerate(zip(whole, bounded, strict=True)):
        served = (index + 1) * batch
        print(f"{served:>16,}  {slow * 1000:>17.2f}  {fast * 1000:>19.2f}  {slow / fast:>5.1f}x")
    print(
        f"last batch: whole log {whole[-1] / whole[0]:.1f}x its first batch, bounded {bounded[-1] / bounded[0]:.1f}x; "
        f"whole/bounded {whole[-1] / bounded[-1]:.1f}x after {requests:,} requests"
    )


if __name__ == "__main__":
    main()
