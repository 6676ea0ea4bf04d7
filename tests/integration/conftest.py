"""Integration fixtures: a FabricEmulator with a SimulatedKubelet already running (it must start before any
operator), wrapped in the harness's Cluster; operators started by a test are stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kmock
import pytest

from gpufabric.sandbox.emulator import FabricEmulator
from gpufabric.sandbox.kubelet import SimulatedKubelet
from support.harness import Cluster


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with FabricEmulator() as api, kmock.Server(api):
        kubelet = SimulatedKubelet(api, interval=0.02, ready_after=0.05, terminate_after=0.05)
        kubelet.start()  # before any operator: kopf takes over tasks created after it starts
        environment = Cluster(api, kubelet)
        try:
            yield environment
        finally:
            for running in list(environment.operators):
                await environment.stop_operator(running.operator)
            await kubelet.stop()
        assert kubelet.errors == []
