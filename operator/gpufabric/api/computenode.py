"""`ComputeNode`: one GPU server of the fabric — its accelerators, their memory and precisions, its
RoCE NICs and its place in the fabric. Cluster-scoped, like the Node it describes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from gpufabric import vendors
from gpufabric.api.common import (
    DNS_LABEL_PATTERN,
    GROUP_VERSION,
    INTERFACE_PATTERN,
    MAX_LIST_ITEMS,
    NETWORK_ATTACHMENT_PATTERN,
    RDMA_DEVICE_PATTERN,
    SET_LIST,
    UNIQUE,
    Conditions,
    Labels,
    Name,
    ObjectMeta,
    ResourceName,
    Rule,
    ShortText,
    WireModel,
    cel_list,
)
from gpufabric.api.refs import Kind, ObjectRef
from gpufabric.api.tokens import TokensPerSecond
from gpufabric.vendors import Precision, Vendor

MAX_DEVICES_PER_NODE = 64
# RoCE v2 over IPv4 usually sits at GID index 3 on ConnectX NICs (index 0/1 RoCE v1, 2/3 v2 IPv6/IPv4
# link-local vs. routable): NVIDIA's NCCL and RoCE tuning guides use NCCL_IB_GID_INDEX=3.
DEFAULT_GID_INDEX = 3

_KNOWN = tuple(vendors.ACCELERATORS)
_MAKER = {name: facts.vendor for name, facts in vendors.ACCELERATORS.items()}
_DRA_DEFAULTS = "; ".join(f"{v}: {', '.join(f.dra_drivers) or 'none known'}" for v, f in vendors.VENDORS.items())
_CEL_MODELS_BY_VENDOR = (
    "{" + ", ".join(f"'{v}': {cel_list([a.name for a in vendors.accelerators_of(v)])}" for v in Vendor) + "}"
)

DomainName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
# A DRA driver's name is a DNS subdomain (resource.k8s.io/v1 ResourceSlice spec.driver, at most 63 characters).
DraDriverName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ),
]


class DeviceSource(StrEnum):
    """Where a ComputeNode's offered devices are read from."""

    DEVICE_PLUGIN = "DevicePlugin"  # the Node's status.allocatable for the device resource
    DRA = "DynamicResourceAllocation"  # ResourceSlices of the node's DRA driver
    NONE = "None"  # neither: the Node is missing or advertises none of them


class Fabric(WireModel):
    """Where the node sits in the RoCE network."""

    roce_domain: DomainName = Field(
        description="Nodes that share one lossless RoCE network (one PFC/ECN-tuned fabric). A multi-node "
        "replica never leaves one domain."
    )
    rack: DomainName | None = Field(default=None, description="Rack, for spreading replicas and for people.")
    leaf: DomainName | None = Field(default=None, description="Leaf switch the node's NICs attach to.")


class Nic(WireModel):
    """One RoCE NIC: the netdev the collective library binds to and the RDMA device behind it."""

    interface: Annotated[str, StringConstraints(pattern=INTERFACE_PATTERN)] = Field(
        description="Linux network interface (netdev) name, e.g. `ens1f0` or `net1` inside a Multus pod."
    )
    rdma_device: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=RDMA_DEVICE_PATTERN)] = Field(
        description="RDMA device (ibdev) name, e.g. `mlx5_0`; NCCL_IB_HCA takes these names."
    )
    gid_index: Annotated[int, Field(strict=True, ge=0, le=255)] = Field(
        default=DEFAULT_GID_INDEX, description="GID index selecting RoCE v2 (3 on most ConnectX setups)."
    )
    bandwidth_gbps: Annotated[float, Field(strict=True, gt=0, le=3200)] | None = Field(
        default=None, description="Line rate in Gbit/s, e.g. 200 or 400."
    )


class ComputeNodeSpec(WireModel):
    """What the platform team declares about one GPU server."""

    node_name: Name = Field(description="The Kubernetes Node this ComputeNode describes.")
    vendor: Vendor = Field(description="Accelerator vendor: decides runtime, resource name and collective library.")
    accelerator: ShortText = Field(
        description="Accelerator model, e.g. `H100-SXM5-80GB`, `H20`, `B200`, `MTT-S4000`, `Ascend-910B3`. "
        "Known models take memory and precisions from the operator's vendor table."
    )
    devices: Annotated[int, Field(strict=True, ge=1, le=MAX_DEVICES_PER_NODE)] = Field(
        description="Accelerators in this node that the operator may allocate."
    )
    memory_gib: Annotated[float, Field(strict=True, gt=0, le=4096)] | None = Field(
        default=None,
        alias="memoryGiB",
        description="Memory per device in GiB. Defaults to the vendor table's figure for known accelerators; "
        "required for others.",
    )
    precisions: Annotated[list[Precision], Field(min_length=1, max_length=8), UNIQUE] | None = Field(
        default=None,
        description="Numeric formats the accelerator serves natively. Defaults to the vendor table's list for "
        "known accelerators; required for others.",
        json_schema_extra=SET_LIST,
    )
    resource_name: ResourceName | None = Field(
        default=None,
        description="Extended resource the device plugin advertises for these devices. Defaults per vendor "
        f"({', '.join(f'{v}: {f.resource_name}' for v, f in vendors.VENDORS.items())}); override for plugins that "
        "advertise other names, such as HAMi's per-model or shared-device resources.",
    )
    fabric: Fabric | None = Field(
        default=None,
        description="Place in the RoCE fabric. Nodes without one never host multi-node replicas.",
    )
    nics: Annotated[list[Nic], Field(max_length=16)] = Field(
        default_factory=list,
        description="RoCE NICs. Multi-node replicas need at least one.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["interface"]},
    )
    dra_driver: DraDriverName | None = Field(
        default=None,
        description="Dynamic Resource Allocation driver whose ResourceSlices publish these devices, where the "
        "cluster publishes them that way. Defaults per vendor "
        f"({_DRA_DEFAULTS}). "
        "Where the Node has slices of the driver, the operator counts the devices in them instead of the Node's "
        "allocatable, and devices allocated to others' ResourceClaims as held.",
    )
    rdma_resource: ResourceName | None = Field(
        default=None,
        description="Extended resource a pod must request to use the RDMA devices, e.g. "
        "`rdma/rdma_shared_device_a` (k8s-rdma-shared-dev-plugin).",
    )
    network_attachment: (
        Annotated[
            str,
            StringConstraints(
                min_length=1,
                max_length=253,
                pattern=NETWORK_ATTACHMENT_PATTERN,
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="Multus NetworkAttachmentDefinition (`name` or `namespace/name`) that gives pods the RoCE "
        "interfaces.",
    )
    labels: Labels = Field(
        default_factory=dict,
        description="Labels AgentWorkloads select on (merged over metadata.labels; these win).",
    )
    unschedulable: bool = Field(
        strict=True, default=False, description="Cordon: place nothing new here and move existing replicas away."
    )

    crd_rules = (
        Rule(
            cel=f"self.accelerator in {cel_list(_KNOWN)} || (has(self.memoryGiB) && has(self.precisions))",
            holds=lambda s: s.accelerator in _KNOWN or (s.memory_gib is not None and s.precisions is not None),
            message="memoryGiB and precisions are required for an accelerator the vendor table does not know",
            message_expression="'accelerator ' + self.accelerator + ' is not in the vendor table "
            f"(known: {', '.join(_KNOWN)}): set memoryGiB and precisions'",
            explain=lambda s: (
                f"accelerator {s.accelerator} is not in the vendor table "
                f"(known: {', '.join(_KNOWN)}): set memoryGiB and precisions"
            ),
            field_path=".accelerator",
        ),
        Rule(
            cel=f"!(self.accelerator in {cel_list(_KNOWN)})"
            f" || self.accelerator in {_CEL_MODELS_BY_VENDOR}[self.vendor]",
            holds=lambda s: s.accelerator not in _KNOWN or _MAKER[s.accelerator] == s.vendor,
            message="the accelerator is made by another vendor",
            message_expression="'accelerator ' + self.accelerator + ' is not made by ' + self.vendor",
            explain=lambda s: f"accelerator {s.accelerator} is not made by {s.vendor}",
            field_path=".vendor",
        ),
        Rule(
            cel="!has(self.rdmaResource) || (has(self.nics) && size(self.nics) > 0)",
            holds=lambda s: s.rdma_resource is None or bool(s.nics),
            message="rdmaResource needs at least one entry in nics",
            field_path=".nics",
        ),
    )

    @property
    def memory_per_device_gib(self) -> float:
        if self.memory_gib is not None:
            return self.memory_gib
        known = vendors.accelerator(self.accelerator)
        assert known is not None, "validation guarantees memoryGiB for unknown accelerators"
        return known.memory_gib

    @property
    def supported_precisions(self) -> frozenset[Precision]:
        if self.precisions is not None:
            return frozenset(self.precisions)
        known = vendors.accelerator(self.accelerator)
        assert known is not None, "validation guarantees precisions for unknown accelerators"
        return known.precisions

    @property
    def device_resource_name(self) -> str:
        return self.resource_name or vendors.facts(self.vendor).resource_name

    @property
    def dra_driver_names(self) -> tuple[str, ...]:
        return (self.dra_driver,) if self.dra_driver else vendors.facts(self.vendor).dra_drivers

    @property
    def roce_domain(self) -> str | None:
        return self.fabric.roce_domain if self.fabric else None

    @property
    def has_rdma(self) -> bool:
        return bool(self.nics)


class NodeWorkload(WireModel):
    """One AgentWorkload's share of this node."""

    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    name: Name
    devices: Annotated[int, Field(strict=True, ge=0)]


class ComputeNodeStatus(WireModel):
    """What the operator observed. Written by the operator only."""

    observed_generation: Annotated[int, Field(strict=True, ge=0)] | None = None
    conditions: Conditions = Field(default_factory=list)
    offered_devices: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        default=None,
        description="Devices the node offers now: the smaller of spec.devices and what its Node advertises "
        "(the device plugin's allocatable, or the devices in its DRA ResourceSlices).",
    )
    device_source: DeviceSource | None = Field(default=None, description="Where offeredDevices was read from.")
    allocated_devices: Annotated[int, Field(strict=True, ge=0)] = Field(
        default=0, description="Devices allocated to the operator's replicas."
    )
    held_by_others: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        default=None,
        description="Devices pods the operator does not manage hold on the Node (their requests of the device "
        "resource, or their ResourceClaims' allocations).",
    )
    free_devices: Annotated[int, Field(strict=True, ge=0)] = Field(
        default=0, description="Devices new replicas can take: offered, less allocated and held by others."
    )
    workloads: Annotated[list[NodeWorkload], Field(max_length=MAX_LIST_ITEMS * 4)] = Field(default_factory=list)
    tokens_per_second: TokensPerSecond | None = None


class ComputeNode(WireModel):
    api_version: Literal["gpufabric.io/v1alpha1"] = GROUP_VERSION  # type: ignore[assignment]
    kind: Literal["ComputeNode"] = "ComputeNode"
    metadata: ObjectMeta
    spec: ComputeNodeSpec
    status: ComputeNodeStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(Kind.COMPUTE_NODE, None, self.metadata.name)

    @property
    def selection_labels(self) -> dict[str, str]:
        """Labels AgentWorkloads select on: metadata.labels with spec.labels laid over them."""
        return {**self.metadata.labels, **self.spec.labels}
