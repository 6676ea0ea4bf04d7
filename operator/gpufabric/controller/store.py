"""The learned throughput table outlives the operator: the leader saves it to a ConfigMap it owns
(`gpufabric-learned-throughput` in the operator's namespace) and every instance loads it at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from gpufabric.api import labels
from gpufabric.controller.kube import Kube, WriteFailedError
from gpufabric.controller.leader import Leadership
from gpufabric.throughput import LearnedThroughput
from gpufabric.throughput.learning import STORE_CONFIG_MAP as CONFIG_MAP
from gpufabric.throughput.learning import STORE_KEY as KEY

log = logging.getLogger(__name__)


@dataclass
class LearnedStore:
    kube: Kube
    namespace: str
    learned: LearnedThroughput
    every: float = 60.0

    async def load(self) -> None:
        try:
            data = await self.kube.read_config_map(self.namespace, CONFIG_MAP)
        except (WriteFailedError, OSError) as error:
            log.warning("learned throughput not loaded (starting from the priors): %s", error)
            return
        if data and KEY in data:
            for problem in self.learned.load(data[KEY]):
                log.warning("learned throughput: %s", problem)

    async def save(self) -> None:
        manifest = {
            "metadata": {
                "name": CONFIG_MAP,
                "namespace": self.namespace,
                "labels": {labels.MANAGED_BY: labels.MANAGER},
            },
            "data": {KEY: self.learned.dump()},
        }
        await self.kube.apply_config_map(manifest)

    async def run(self, stop: asyncio.Event, leadership: Leadership) -> None:
        saved = self.learned.dump()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.every)
            current = self.learned.dump()
            if leadership.leading and current != saved:
                try:
                    await self.save()
                    saved = current
                except WriteFailedError as error:
                    log.warning("learned throughput not saved: %s", error)
