"""Everything the operator knows about accelerator vendors and models, in one table.

Nothing outside this module spells a vendor's resource name, environment variable, label or taint:
rendering, placement, discovery and the CRD's validation rules all read them from here. Each fact
carries its source; figures we could not find published are marked ESTIMATE with the reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    MTHREADS = "mthreads"
    ASCEND = "ascend"


class Precision(StrEnum):
    """Numeric format of the served weights (and, where the runtime supports it, activations)."""

    FP4 = "FP4"
    FP8 = "FP8"
    INT8 = "INT8"
    BF16 = "BF16"
    FP16 = "FP16"


# Bytes one parameter occupies in memory at each precision (FP4 packs two values per byte).
BYTES_PER_PARAMETER: Mapping[Precision, float] = MappingProxyType(
    {
        Precision.FP4: 0.5,
        Precision.FP8: 1.0,
        Precision.INT8: 1.0,
        Precision.BF16: 2.0,
        Precision.FP16: 2.0,
    }
)


@dataclass(frozen=True)
class CollectiveLibrary:
    """The collective-communication library a vendor's runtime uses across nodes, and the environment
    variables that point it at the node's RoCE NICs."""

    name: str
    # Interface for the library's TCP bootstrap / out-of-band traffic.
    socket_interface_env: str
    # Comma-separated RDMA devices to use (None where the library takes them another way).
    rdma_devices_env: str | None
    # GID index selecting RoCE v2 (None where the library finds it itself).
    gid_index_env: str | None
    # The pod's own IP for the library's bootstrap, where the library wants it spelled out.
    interface_ip_env: str | None
    # Fixed settings that keep the RDMA transport on.
    fixed_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiscoveryLabels:
    """Node labels the vendor's own feature discovery publishes; `--discover-nodes` reads them."""

    # A label whose presence marks a node as carrying this vendor's devices, and the value it must have
    # (None: any value).
    presence_key: str
    presence_value: str | None
    # Label holding the accelerator model; its values map to our names through `product_labels`.
    product_key: str | None
    # Label with memory per device in MiB, where the vendor publishes one.
    memory_mib_key: str | None


@dataclass(frozen=True)
class VendorFacts:
    vendor: Vendor
    display_name: str
    software_stack: str
    # Extended resource the vendor's device plugin advertises per whole device.
    resource_name: str
    # What the device plugin sets so the container runtime mounts the allocated devices. Nobody else may
    # set it: a pod setting it itself (e.g. NVIDIA_VISIBLE_DEVICES=all) would see devices it was not given.
    plugin_visible_devices_env: str
    # What the compute runtime reads inside the process to pick among the mounted devices.
    runtime_visible_devices_env: str
    collective: CollectiveLibrary
    discovery: DiscoveryLabels
    # Taint keys GPU nodes of this vendor carry; pods the operator renders tolerate them (Exists).
    taint_keys: tuple[str, ...]
    # Drivers that publish this vendor's devices through Dynamic Resource Allocation (resource.k8s.io/v1
    # ResourceSlices' spec.driver); a ComputeNode's spec.draDriver names another.
    dra_drivers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ThroughputPrior:
    """A published (or estimated) serving figure: aggregate generation tokens/s one device sustains for a
    dense model of `parameters_billions` at `precision`, at saturating concurrency."""

    tokens_per_second: float
    parameters_billions: float
    precision: Precision
    estimated: bool
    source: str


@dataclass(frozen=True)
class AcceleratorFacts:
    name: str
    vendor: Vendor
    memory_gib: float
    memory_bandwidth_gb_per_s: float
    precisions: frozenset[Precision]
    prior: ThroughputPrior
    # Values the vendor's product discovery label takes for this model.
    product_labels: tuple[str, ...] = ()


# How much faster decode runs at each precision than at BF16 on hardware that supports it natively.
# ESTIMATE: decode is bound by reading the weights, so halving bytes per parameter approaches 2x; the
# published TensorRT-LLM tables (NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md) and vLLM's
# FP8 notes (docs.vllm.ai .../quantization/fp8) report 1.3-1.8x for FP8 over BF16, so we take the middle.
PRECISION_SPEEDUP: Mapping[Precision, float] = MappingProxyType(
    {
        Precision.FP16: 1.0,
        Precision.BF16: 1.0,
        Precision.INT8: 1.5,
        Precision.FP8: 1.6,
        Precision.FP4: 2.4,
    }
)

_TRTLLM_PERF = "NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md @00f37686, ISL/OSL 1000/1000"
_GPUSTACK_910B = "gpustack/gpustack docs/performance-lab/qwen3-8b/910b.md @1dbc3b81 (MindIE 2.1RC1, ShareGPT)"
# ESTIMATE method for devices nobody publishes serving numbers for: scale the H100's published figure by
# sqrt(bandwidth ratio x dense-compute ratio) - decode is bandwidth-bound at low batch and compute-bound at
# saturating batch - times a software-stack efficiency (1.0 CUDA, 0.6 for vLLM-MUSA: a guess).
_ESTIMATE = "ESTIMATE: H100 figure x sqrt(bandwidth ratio x compute ratio) x stack efficiency"


_VENDORS: dict[Vendor, VendorFacts] = {
    Vendor.NVIDIA: VendorFacts(
        vendor=Vendor.NVIDIA,
        display_name="NVIDIA",
        software_stack="CUDA",
        # NVIDIA/k8s-device-plugin README.md (pod `limits: nvidia.com/gpu: 1`).
        resource_name="nvidia.com/gpu",
        # NVIDIA/k8s-device-plugin README.md: DEVICE_LIST_STRATEGY=envvar (default) sets
        # NVIDIA_VISIBLE_DEVICES for the NVIDIA container runtime; CUDA reads CUDA_VISIBLE_DEVICES.
        plugin_visible_devices_env="NVIDIA_VISIBLE_DEVICES",
        runtime_visible_devices_env="CUDA_VISIBLE_DEVICES",
        # docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html: NCCL_SOCKET_IFNAME, NCCL_IB_HCA,
        # NCCL_IB_GID_INDEX, NCCL_IB_DISABLE (0 keeps the IB/RoCE verbs transport on).
        collective=CollectiveLibrary(
            name="NCCL",
            socket_interface_env="NCCL_SOCKET_IFNAME",
            rdma_devices_env="NCCL_IB_HCA",
            gid_index_env="NCCL_IB_GID_INDEX",
            interface_ip_env=None,
            fixed_env=MappingProxyType({"NCCL_IB_DISABLE": "0"}),
        ),
        # NVIDIA/k8s-device-plugin docs/gpu-feature-discovery/README.md (label table): gpu.product,
        # gpu.memory in MiB; gpu.present is the node-affinity key of the plugin's Helm chart.
        discovery=DiscoveryLabels(
            presence_key="nvidia.com/gpu.present",
            presence_value="true",
            product_key="nvidia.com/gpu.product",
            memory_mib_key="nvidia.com/gpu.memory",
        ),
        # The device plugin's own manifests tolerate nvidia.com/gpu (deployments/static/
        # nvidia-device-plugin.yml); GKE taints GPU nodes nvidia.com/gpu=present:NoSchedule.
        taint_keys=("nvidia.com/gpu",),
        # NVIDIA/k8s-dra-driver-gpu cmd/gpu-kubelet-plugin/main.go (DriverName); whole GPUs are devices
        # `gpu-<minor>` with attribute type=gpu, MIG partitions type=mig (cmd/gpu-kubelet-plugin/deviceinfo.go).
        dra_drivers=("gpu.nvidia.com",),
    ),
    Vendor.MTHREADS: VendorFacts(
        vendor=Vendor.MTHREADS,
        display_name="Moore Threads",
        software_stack="MUSA",
        # Project-HAMi/website docs/installation/how-to-use-mthreads-s5000.md: the vendor plugin reports whole
        # cards as mthreads.com/gpu (HAMi's own is mthreads.com/vgpu: set spec.resourceName for it).
        resource_name="mthreads.com/gpu",
        # Same page: MTHREADS_VISIBLE_DEVICES is the card index visible inside the container;
        # MooreThreads/torch_musa docs/markdown/source/04_quick_start.md: MUSA_VISIBLE_DEVICES.
        plugin_visible_devices_env="MTHREADS_VISIBLE_DEVICES",
        runtime_visible_devices_env="MUSA_VISIBLE_DEVICES",
        # MCCL is NCCL-derived. MooreThreads/MT-MegatronLM examples/deepseek-v2 .../run_pretrain_deepseekv2_musa.sh
        # sets MCCL_IB_GID_INDEX=3; MCCL_SOCKET_IFNAME and MCCL_IB_HCA appear only in community vllm_musa
        # multi-node guides (UNVERIFIED: no public MCCL environment reference exists).
        collective=CollectiveLibrary(
            name="MCCL",
            socket_interface_env="MCCL_SOCKET_IFNAME",
            rdma_devices_env="MCCL_IB_HCA",
            gid_index_env="MCCL_IB_GID_INDEX",
            interface_ip_env=None,
            fixed_env=MappingProxyType({}),
        ),
        # how-to-use-mthreads-s5000.md: nodes carry mthreads.com/gpu-node=true; no product label is
        # documented, so discovery needs gpufabric.io/accelerator on the Node to know the model.
        discovery=DiscoveryLabels(
            presence_key="mthreads.com/gpu-node",
            presence_value="true",
            product_key=None,
            memory_mib_key=None,
        ),
        # No documented default taint: ESTIMATE, taint with the resource name like the other vendors.
        taint_keys=("mthreads.com/gpu",),
        # No DRA driver for MUSA devices is published (searched Dec 2026): spec.draDriver names one if a
        # cluster runs its own.
        dra_drivers=(),
    ),
    Vendor.ASCEND: VendorFacts(
        vendor=Vendor.ASCEND,
        display_name="Huawei Ascend",
        software_stack="CANN",
        # Ascend/mind-cluster component/ascend-common/api/default_name.go (HuaweiAscend910) and
        # ascend-device-plugin/pkg/common/common.go: 910A, 910B, 910A3 all advertise huawei.com/Ascend910.
        # HAMi advertises per-model names (huawei.com/Ascend910B3): set spec.resourceName for those.
        resource_name="huawei.com/Ascend910",
        # mind-cluster common.go SetAscendRuntimeEnv sets ASCEND_VISIBLE_DEVICES for Ascend Docker Runtime;
        # CANN reads ASCEND_RT_VISIBLE_DEVICES (hiascend.com canncommercial/850 envref_07_0028).
        plugin_visible_devices_env="ASCEND_VISIBLE_DEVICES",
        runtime_visible_devices_env="ASCEND_RT_VISIBLE_DEVICES",
        # hiascend.com CANNCommunityEdition/900 hcclenvref_07_0017 / hcclug_000037: HCCL_SOCKET_IFNAME and
        # HCCL_IF_IP choose the host NIC for bootstrap. HCCL's RDMA runs over the NPUs' own RoCE ports
        # (per-NPU device_ip in the rank table), so there is no HCA variable to set.
        collective=CollectiveLibrary(
            name="HCCL",
            socket_interface_env="HCCL_SOCKET_IFNAME",
            rdma_devices_env=None,
            gid_index_env=None,
            interface_ip_env="HCCL_IF_IP",
            fixed_env=MappingProxyType({}),
        ),
        # mind-cluster ascend-device-plugin/pkg/server/manager.go (acceleratorLabelMap): accelerator=
        # huawei-Ascend910; pkg/common/constants.go: node.kubernetes.io/npu.chip.name (e.g. 910B3).
        discovery=DiscoveryLabels(
            presence_key="accelerator",
            presence_value="huawei-Ascend910",
            product_key="node.kubernetes.io/npu.chip.name",
            memory_mib_key=None,
        ),
        # mind-cluster ascend-device-plugin/build/ascendplugin-volcano.yaml tolerates these keys.
        taint_keys=("huawei.com/Ascend910", "huawei.com/npu"),
        # HAMi's Project-HAMi/ascend-dra-driver pkg/consts/consts.go names its driver ascend.project-hami.io.
        # npu.huawei.com is the name this project's issue gives Huawei's own (ESTIMATE: no such driver was found
        # published, Dec 2026); a name no slice uses costs nothing, so both are looked for.
        dra_drivers=("npu.huawei.com", "ascend.project-hami.io"),
    ),
}

_H100_FP8_8B = 15220.0  # TensorRT-LLM, 1x H100 SXM, Llama-3.1-8B FP8 (_TRTLLM_PERF)
_H100_BF16_8B = _H100_FP8_8B / PRECISION_SPEEDUP[Precision.FP8]

_HOPPER = frozenset({Precision.FP8, Precision.INT8, Precision.BF16, Precision.FP16})
_NO_FP8 = frozenset({Precision.INT8, Precision.BF16, Precision.FP16})

_ACCELERATORS: tuple[AcceleratorFacts, ...] = (
    # NVIDIA: memory and bandwidth from NVIDIA datasheets (glennklockwood.com/garden/processors/h100, /B200,
    # /A100); GB sizes match HAMi's MIG profiles (Project-HAMi/HAMi charts/hami/templates/scheduler/
    # device-configmap.yaml: 7g.96gb, 7g.141gb, 7g.180gb). Product labels are NVML device names as GFD
    # sanitises them (k8s-device-plugin internal/lm/resource.go: spaces become '-').
    AcceleratorFacts(
        name="H100-SXM5-80GB",
        vendor=Vendor.NVIDIA,
        memory_gib=80,
        memory_bandwidth_gb_per_s=3350,
        precisions=_HOPPER,
        prior=ThroughputPrior(_H100_FP8_8B, 8, Precision.FP8, estimated=False, source=_TRTLLM_PERF),
        product_labels=("NVIDIA-H100-80GB-HBM3",),
    ),
    AcceleratorFacts(
        # NVIDIA H100 PCIe product brief PB-11133-001: 80 GB, >2,000 GB/s; BF16 756 vs 989 TFLOPS SXM.
        name="H100-PCIe-80GB",
        vendor=Vendor.NVIDIA,
        memory_gib=80,
        memory_bandwidth_gb_per_s=2000,
        precisions=_HOPPER,
        prior=ThroughputPrior(
            round(_H100_FP8_8B * (0.60 * 0.76) ** 0.5), 8, Precision.FP8, estimated=True, source=_ESTIMATE
        ),
        product_labels=("NVIDIA-H100-PCIe",),
    ),
    AcceleratorFacts(
        name="H200",
        vendor=Vendor.NVIDIA,
        memory_gib=141,
        memory_bandwidth_gb_per_s=4800,
        precisions=_HOPPER,
        prior=ThroughputPrior(17744, 8, Precision.FP8, estimated=False, source=_TRTLLM_PERF),
        product_labels=("NVIDIA-H200",),
    ),
    AcceleratorFacts(
        # 96 GB HBM3, 4.0 TB/s; FP8 dense ~296 TFLOPS, about 0.15 of the H100's (willitrunai.com/gpus/h20-96gb,
        # third-party): bandwidth-rich, compute-poor, so the estimate is far below the H100 at high batch.
        name="H20",
        vendor=Vendor.NVIDIA,
        memory_gib=96,
        memory_bandwidth_gb_per_s=4000,
        precisions=_HOPPER,
        prior=ThroughputPrior(
            round(_H100_FP8_8B * (1.19 * 0.15) ** 0.5), 8, Precision.FP8, estimated=True, source=_ESTIMATE
        ),
        product_labels=("NVIDIA-H20",),
    ),
    AcceleratorFacts(
        # DGX/HGX B200 exposes 180 GB (mlcommons inference_results_v6.0 nebius_b200_n1.json). INT8 is left
        # out: vLLM's W8A8 INT8 path is "not supported on compute capability >= 10.0"
        # (docs.vllm.ai/en/latest/features/quantization/int8/).
        name="B200",
        vendor=Vendor.NVIDIA,
        memory_gib=180,
        memory_bandwidth_gb_per_s=8000,
        precisions=frozenset({Precision.FP4, Precision.FP8, Precision.BF16, Precision.FP16}),
        prior=ThroughputPrior(
            7007, 70, Precision.FP4, estimated=False, source=_TRTLLM_PERF + ", Llama-3.3-70B FP4, TP1"
        ),
        product_labels=("NVIDIA-B200",),
    ),
    AcceleratorFacts(
        # A100 80GB SXM: 2,039 GB/s, BF16 312 TFLOPS, no native FP8 (vLLM runs FP8 only weight-only there).
        name="A100-80GB",
        vendor=Vendor.NVIDIA,
        memory_gib=80,
        memory_bandwidth_gb_per_s=2039,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            round(_H100_BF16_8B * (0.61 * 0.32) ** 0.5), 8, Precision.BF16, estimated=True, source=_ESTIMATE
        ),
        product_labels=("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    ),
    AcceleratorFacts(
        # L40S datasheet: 48 GB GDDR6, 864 GB/s, FP8 733 TFLOPS dense.
        name="L40S",
        vendor=Vendor.NVIDIA,
        memory_gib=48,
        memory_bandwidth_gb_per_s=864,
        precisions=_HOPPER,
        prior=ThroughputPrior(
            round(_H100_FP8_8B * (0.26 * 0.37) ** 0.5), 8, Precision.FP8, estimated=True, source=_ESTIMATE
        ),
        product_labels=("NVIDIA-L40S",),
    ),
    # Moore Threads: no public serving figures exist for either card.
    AcceleratorFacts(
        # MTT S4000: 48 GB GDDR6, 768 GB/s, BF16 100 TFLOPS, INT8 200 TOPS, FP8 never listed (io-tech.fi and
        # tweakpc.de launch coverage; 48 GiB confirmed by Project-HAMi/website mthreads-device docs).
        name="MTT-S4000",
        vendor=Vendor.MTHREADS,
        memory_gib=48,
        memory_bandwidth_gb_per_s=768,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            round(_H100_BF16_8B * (0.23 * 0.10) ** 0.5 * 0.6),
            8,
            Precision.BF16,
            estimated=True,
            source=_ESTIMATE,
        ),
        product_labels=("MTT-S4000",),
    ),
    AcceleratorFacts(
        # MTT S5000: 80 GB, 1.6 TB/s, native FP8 ~1 PFLOPS claimed (third-party coverage; 80 GiB confirmed by
        # Project-HAMi/website docs/userguide/mthreads-device/specify-device-memory-usage.md).
        name="MTT-S5000",
        vendor=Vendor.MTHREADS,
        memory_gib=80,
        memory_bandwidth_gb_per_s=1600,
        precisions=_HOPPER,
        prior=ThroughputPrior(
            round(_H100_FP8_8B * (0.48 * 0.5) ** 0.5 * 0.6),
            8,
            Precision.FP8,
            estimated=True,
            source=_ESTIMATE,
        ),
        product_labels=("MTT-S5000",),
    ),
    # Ascend: HBM per device from HAMi's device-configmap.yaml (memoryCapacity 65536 MiB for 910B2, 910B3;
    # 32768 for 910B4). Bandwidth ESTIMATE ~1.6 TB/s per die: half of the 910C's 3.2 TB/s over two dies.
    # No FP8 before Ascend 950 (Huawei's roadmap presents native FP8 as new there); INT8 W8A8 is served.
    AcceleratorFacts(
        name="Ascend-910B2",
        vendor=Vendor.ASCEND,
        memory_gib=64,
        memory_bandwidth_gb_per_s=1600,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            2711,
            8,
            Precision.BF16,
            estimated=False,
            source=_GPUSTACK_910B + "; the source does not name the 910B variant",
        ),
        product_labels=("910B2",),
    ),
    AcceleratorFacts(
        name="Ascend-910B3",
        vendor=Vendor.ASCEND,
        memory_gib=64,
        memory_bandwidth_gb_per_s=1600,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            2711,
            8,
            Precision.BF16,
            estimated=False,
            source=_GPUSTACK_910B + "; the source does not name the 910B variant",
        ),
        product_labels=("910B3",),
    ),
    AcceleratorFacts(
        # ESTIMATE: half the memory and fewer AI cores than the 910B3; scaled by 0.7.
        name="Ascend-910B4",
        vendor=Vendor.ASCEND,
        memory_gib=32,
        memory_bandwidth_gb_per_s=800,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            round(2711 * 0.7),
            8,
            Precision.BF16,
            estimated=True,
            source="ESTIMATE: 910B figure x 0.7 for the smaller part",
        ),
        product_labels=("910B4",),
    ),
    AcceleratorFacts(
        # One 910C die as the device plugin advertises it (HAMi models each die as 65536 MiB and allocates
        # whole modules of two). ESTIMATE: a die performs like a 910B.
        name="Ascend-910C",
        vendor=Vendor.ASCEND,
        memory_gib=64,
        memory_bandwidth_gb_per_s=1600,
        precisions=_NO_FP8,
        prior=ThroughputPrior(
            2711,
            8,
            Precision.BF16,
            estimated=True,
            source="ESTIMATE: one die performs like a 910B (" + _GPUSTACK_910B + ")",
        ),
        product_labels=("910C",),
    ),
)

VENDORS: Mapping[Vendor, VendorFacts] = MappingProxyType(_VENDORS)
ACCELERATORS: Mapping[str, AcceleratorFacts] = MappingProxyType({a.name: a for a in _ACCELERATORS})

# Set by device plugins only; a workload must not set them (see VendorFacts.plugin_visible_devices_env).
PLUGIN_OWNED_ENV: tuple[str, ...] = tuple(f.plugin_visible_devices_env for f in _VENDORS.values())


def facts(vendor: Vendor) -> VendorFacts:
    return VENDORS[vendor]


def accelerator(name: str) -> AcceleratorFacts | None:
    """The table's entry for an accelerator model, or None for models it does not know."""
    return ACCELERATORS.get(name)


def accelerator_for_product_label(vendor: Vendor, value: str) -> AcceleratorFacts | None:
    """The accelerator a vendor's discovery label value names, e.g. GFD's `NVIDIA-H100-80GB-HBM3`."""
    for candidate in ACCELERATORS.values():
        if candidate.vendor == vendor and (value in candidate.product_labels or value == candidate.name):
            return candidate
    return None


def accelerators_of(vendor: Vendor) -> tuple[AcceleratorFacts, ...]:
    return tuple(a for a in ACCELERATORS.values() if a.vendor == vendor)
