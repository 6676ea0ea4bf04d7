"""Placement scenarios, one readable row each: the fleet, the workloads, and where every replica must go
(accelerator, precision, devices per node, nodes) or the exact reason it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gpufabric.api import AgentWorkload, ComputeNode
from gpufabric.placement import ExistingReplica, Snapshot, place
from support.fleet import PRIOR, node, requests, workload

H100, H20, B200, A100 = "H100-SXM5-80GB", "H20", "B200", "A100-80GB"
S4000, ASCEND = "MTT-S4000", "Ascend-910B3"


@dataclass
class Scenario:
    fleet: list[ComputeNode]
    workloads: list[AgentWorkload]
    # "namespace/name#replica" -> (accelerator, precision, devices per node, nodes) or a refusal reason
    want: dict[str, tuple[str, str, int, tuple[str, ...]] | str]
    not_ready: tuple[str, ...] = ()
    existing: list[ExistingReplica] = field(default_factory=list)


SCENARIOS: dict[str, Scenario] = {
    "a 70B model at FP8 takes two 80 GB devices": Scenario(
        [node("h1", H100)],
        [workload("llm", params=70.6, precisions=("FP8", "BF16"), context=32768)],
        {"default/llm#0": (H100, "FP8", 2, ("h1",))},
    ),
    "the same model at BF16 takes four": Scenario(
        [node("h1", H100)],
        [workload("llm", params=70.6, precisions=("BF16",), context=32768)],
        {"default/llm#0": (H100, "BF16", 4, ("h1",))},
    ),
    "Ascend has no FP8, so the replica falls back to INT8": Scenario(
        [node("a1", ASCEND)],
        [workload("small", params=7.6, precisions=("FP8", "INT8", "BF16"), runtimes=("ascend",))],
        {"default/small#0": (ASCEND, "INT8", 1, ("a1",))},
    ),
    "Moore Threads serves BF16 when INT8 is not accepted": Scenario(
        [node("m1", S4000)],
        [workload("small", params=7.6, precisions=("FP8", "BF16"), runtimes=("mthreads",))],
        {"default/small#0": (S4000, "BF16", 1, ("m1",))},
    ),
    "B200 serves FP4 when it is preferred": Scenario(
        [node("b1", B200)],
        [workload("big", params=120, precisions=("FP4", "FP8"), runtimes=("nvidia",))],
        {"default/big#0": (B200, "FP4", 1, ("b1",))},
    ),
    "a vendor without a runtime is never used": Scenario(
        [node("a1", ASCEND), node("h1", H100)],
        [workload("chat", runtimes=("ascend",))],
        {"default/chat#0": (ASCEND, "BF16", 1, ("a1",))},
    ),
    "an explicit vendor preference outweighs raw tokens/s": Scenario(
        [node("h1", H100), node("a1", ASCEND), node("m1", S4000)],
        [workload("agent", params=7.6, precisions=("FP8", "INT8", "BF16"), vendorPreference=["ascend", "mthreads"])],
        {"default/agent#0": (ASCEND, "INT8", 1, ("a1",))},
    ),
    "without a preference the fastest accelerator wins": Scenario(
        [node("a1", ASCEND), node("m1", S4000), node("h1", H100)],
        [workload("agent", params=7.6, precisions=("FP8", "INT8", "BF16"))],
        {"default/agent#0": (H100, "FP8", 1, ("h1",))},
    ),
    "a preferred precision holds unless another doubles the tokens": Scenario(
        [node("h1", H100)],
        [workload("careful", params=8, precisions=("BF16", "FP8"))],
        {"default/careful#0": (H100, "BF16", 1, ("h1",))},
    ),
    "a node that is not Ready is skipped": Scenario(
        [node("h1", H100), node("h2", H100)],
        [workload("chat")],
        {"default/chat#0": (H100, "BF16", 1, ("h2",))},
        not_ready=("h1",),
    ),
    "a cordoned node is skipped": Scenario(
        [node("h1", H100, cordoned=True), node("h2", H100)],
        [workload("chat")],
        {"default/chat#0": (H100, "BF16", 1, ("h2",))},
    ),
    "nodeSelector picks nodes by their labels": Scenario(
        [node("h1", H100, labels={"pool": "batch"}), node("h2", H100, labels={"pool": "agents"})],
        [workload("chat", nodeSelector={"matchLabels": {"pool": "agents"}})],
        {"default/chat#0": (H100, "BF16", 1, ("h2",))},
    ),
    "roceDomains limits where replicas go": Scenario(
        [node("h1", H100, domain="a"), node("h2", H100, domain="b")],
        [workload("chat", roceDomains=["b"])],
        {"default/chat#0": (H100, "BF16", 1, ("h2",))},
    ),
    "a gang stays inside the one RoCE domain that can hold it": Scenario(
        [node("h1", H100, domain="a"), node("h2", H100, domain="b"), node("h3", H100, domain="b")],
        [workload("big", params=405, precisions=("BF16",), context=65536, nodesPerReplica=2)],
        {"default/big#0": (H100, "BF16", 8, ("h2", "h3"))},
    ),
    "a gang is refused when no RoCE domain holds enough nodes": Scenario(
        [node("h1", H100, domain="a"), node("h2", H100, domain="b")],
        [workload("big", params=405, precisions=("BF16",), context=65536, nodesPerReplica=2)],
        {
            "default/big#0": "0/2 nodes: 1 in RoCE domain a, which has 1 of 2 nodes needed, "
            "1 in RoCE domain b, which has 1 of 2 nodes needed"
        },
    ),
    "a gang never mixes accelerators, even in one domain": Scenario(
        [node("h1", H100), node("h2", H20)],
        [workload("big", params=70.6, precisions=("FP8",), nodesPerReplica=2, devicesPerReplica=4)],
        {
            "default/big#0": "0/2 nodes: 2 in RoCE domain a, which has 1 of 2 nodes needed",
        },
    ),
    "a gang needs an RDMA NIC on every node": Scenario(
        [node("h1", H100, nics=0), node("h2", H100)],
        [workload("big", params=70.6, precisions=("FP8",), nodesPerReplica=2)],
        {
            "default/big#0": "0/2 nodes: 1 in RoCE domain a, which has 1 of 2 nodes needed, "
            "1 no RDMA NIC (multi-node replicas need one)",
        },
    ),
    "a gang needs its nodes in a RoCE domain": Scenario(
        [node("h1", H100, domain=None), node("h2", H100, domain=None)],
        [workload("big", params=70.6, precisions=("FP8",), nodesPerReplica=2)],
        {"default/big#0": "0/2 nodes: 2 not in a RoCE domain (multi-node replicas need one)"},
    ),
    "an explicit devicesPerReplica splits evenly across a gang": Scenario(
        [node("h1", H100), node("h2", H100)],
        [workload("big", params=405, precisions=("FP8",), nodesPerReplica=2, devicesPerReplica=16)],
        {"default/big#0": (H100, "FP8", 8, ("h1", "h2"))},
    ),
    "best fit fills a partly used node and keeps a whole node for a big replica": Scenario(
        [node("h1", H100), node("h2", H100)],
        [
            workload("a-small", params=8, precisions=("BF16",), devicesPerReplica=2),
            workload("b-big", params=70.6, precisions=("BF16",), context=65536, devicesPerReplica=8),
        ],
        {"default/a-small#0": (H100, "BF16", 2, ("h2",)), "default/b-big#0": (H100, "BF16", 8, ("h1",))},
        existing=[ExistingReplica("other/tenant", 0, ("h2",), 4)],
    ),
    "best fit across domains outweighs a slightly busier domain": Scenario(
        [
            node("a1", H100, domain="a"),
            node("a2", H100, domain="a"),
            node("b1", H100, domain="b"),
            node("b2", H100, domain="b"),
        ],
        [workload("chat", devicesPerReplica=2)],
        {"default/chat#0": (H100, "BF16", 2, ("b1",))},
        existing=[
            ExistingReplica("t/x", 0, ("a1",), 4),
            ExistingReplica("t/y", 0, ("a2",), 8),
            ExistingReplica("t/z", 0, ("b1",), 6),
        ],
    ),
    "a flexible replica leaves scarce capacity to one that can only use it": Scenario(
        [node("b1", B200, labels={"pool": "blackwell"}), node("h1", H100)],
        [
            workload("a-flexible", params=32.8, precisions=("FP8",), runtimes=("nvidia",)),
            workload(
                "b-blackwell-only",
                params=32.8,
                precisions=("FP8",),
                runtimes=("nvidia",),
                nodeSelector={"matchLabels": {"pool": "blackwell"}},
            ),
        ],
        {
            "default/a-flexible#0": (H100, "FP8", 1, ("h1",)),
            "default/b-blackwell-only#0": (B200, "FP8", 1, ("b1",)),
        },
        existing=[ExistingReplica("t/x", 0, ("b1",), 7)],
    ),
    "busier RoCE domains fill first, keeping an empty one whole for gangs": Scenario(
        [
            node("a1", H100, domain="a"),
            node("a2", H100, domain="a"),
            node("b1", H100, domain="b"),
            node("b2", H100, domain="b"),
        ],
        [workload("chat", devicesPerReplica=8)],
        {"default/chat#0": (H100, "BF16", 8, ("b1",))},
        existing=[ExistingReplica("other/tenant", 0, ("b2",), 4)],
    ),
    "spread Node puts replicas on distinct nodes": Scenario(
        [node("h1", H100), node("h2", H100), node("h3", H100)],
        [workload("chat", replicas=3)],
        {
            "default/chat#0": (H100, "BF16", 1, ("h1",)),
            "default/chat#1": (H100, "BF16", 1, ("h2",)),
            "default/chat#2": (H100, "BF16", 1, ("h3",)),
        },
    ),
    "spread None packs replicas onto one node": Scenario(
        [node("h1", H100), node("h2", H100)],
        [workload("chat", replicas=3, spread="None")],
        {f"default/chat#{i}": (H100, "BF16", 1, ("h1",)) for i in range(3)},
    ),
    "spread RoceDomain prefers a new domain over a new node": Scenario(
        [node("a1", H100, domain="a"), node("a2", H100, domain="a"), node("b1", H100, domain="b")],
        [workload("chat", replicas=2, spread="RoceDomain")],
        {"default/chat#0": (H100, "BF16", 1, ("a1",)), "default/chat#1": (H100, "BF16", 1, ("b1",))},
    ),
    "higher priority is placed first when devices are scarce": Scenario(
        [node("h1", H100, devices=4)],
        [
            workload("batch", params=70.6, precisions=("BF16",), context=32768),
            workload("urgent", params=70.6, precisions=("BF16",), context=32768, priority=10),
        ],
        {
            "default/urgent#0": (H100, "BF16", 4, ("h1",)),
            "default/batch#0": "0/1 nodes: 1 insufficient free devices (need 4)",
        },
    ),
    "replicas already running keep their devices": Scenario(
        [node("h1", H100, devices=4)],
        [workload("chat", devicesPerReplica=2)],
        {"default/chat#0": "0/1 nodes: 1 insufficient free devices (need 2)"},
        existing=[ExistingReplica("other/tenant", 0, ("h1",), 3)],
    ),
    "every filter counted once per node": Scenario(
        [
            *(node(f"free{i:02d}", H100, devices=8) for i in range(8)),
            *(node(f"npu{i:02d}", ASCEND) for i in range(6)),
            *(node(f"ampere{i:02d}", A100) for i in range(4)),
            *(node(f"down{i:02d}", H100) for i in range(2)),
        ],
        [workload("llm", params=70.6, precisions=("FP8",), devicesPerReplica=4, runtimes=("nvidia", "mthreads"))],
        {
            "default/llm#0": "0/20 nodes: 8 insufficient free devices (need 4), 6 no runtime for vendor ascend, "
            "4 precision FP8 unsupported, 2 not Ready"
        },
        not_ready=("down00", "down01"),
        existing=[ExistingReplica("other/tenant", 0, (f"free{i:02d}",), 5) for i in range(8)],
    ),
    "a model too big for any node says how many devices it needs": Scenario(
        [node("m1", S4000)],
        [workload("huge", params=405, precisions=("BF16",), runtimes=("mthreads",))],
        {"default/huge#0": "0/1 nodes: 1 too small for the model (needs 32 devices at BF16)"},
    ),
    "an accelerator the table does not know is placed with the facts declared for it": Scenario(
        [node("r1", "RTX-PRO-6000", vendor="nvidia", memoryGiB=96, precisions=["FP8", "BF16"])],
        [workload("chat", precisions=("FP8",))],
        {"default/chat#0": ("RTX-PRO-6000", "FP8", 1, ("r1",))},
    ),
}


def outcome(scenario: Scenario) -> dict[str, tuple[str, str, int, tuple[str, ...]] | str]:
    snapshot = Snapshot([(n, n.name not in scenario.not_ready) for n in scenario.fleet], scenario.existing)
    result = place(snapshot, requests(scenario.workloads), PRIOR)
    got: dict[str, tuple[str, str, int, tuple[str, ...]] | str] = {
        f"{d.workload}#{d.replica}": (
            d.allocation.accelerator,
            d.allocation.precision.value,
            d.allocation.devices_per_node,
            d.allocation.nodes,
        )
        for d in result.decisions
    }
    got.update({f"{r.workload}#{r.replica}": r.reason for r in result.refusals})
    return got


@pytest.mark.parametrize("case", SCENARIOS)
def test_scenario(case: str) -> None:
    scenario = SCENARIOS[case]
    assert outcome(scenario) == scenario.want
