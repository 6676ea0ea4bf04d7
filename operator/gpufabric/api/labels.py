"""Labels and annotations the operator puts on what it creates: part of the API, since users select on
them (`kubectl get pods -l gpufabric.io/workload=chat`) and the operator rebuilds its ledger from them."""

from __future__ import annotations

from gpufabric.api.common import API_GROUP

# Labels (selectable)
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "gpu-fabric-operator"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
WORKLOAD = f"{API_GROUP}/workload"
REPLICA = f"{API_GROUP}/replica"
RANK = f"{API_GROUP}/rank"

# Annotations (facts about the allocation; the ledger reads them back)
COMPUTE_NODE = f"{API_GROUP}/compute-node"
DEVICES = f"{API_GROUP}/devices"
REPLICA_NODES = f"{API_GROUP}/replica-nodes"
VENDOR = f"{API_GROUP}/vendor"
ACCELERATOR = f"{API_GROUP}/accelerator"
PRECISION = f"{API_GROUP}/precision"
TEMPLATE_HASH = f"{API_GROUP}/template-hash"
ENGINE = f"{API_GROUP}/engine"
ENGINE_CONFIG = f"{API_GROUP}/engine-config"  # the ConfigMap a pod mounts its engine's files from

# Set by the tokens/s autoscaler together with spec.replicas: a different spec.replicas means someone else
# (an HPA, KEDA, kubectl scale) now owns the count, and the autoscaler stands down.
SCALED_TO = f"{API_GROUP}/scaled-to"
