"""Rendering: placement decisions into vendor-correct Pod and Service manifests. Pure: dicts out."""

from gpufabric.rendering.names import client_service_name, engine_config_name, pod_name, replica_service_name
from gpufabric.rendering.pods import engine_command, render_engine_config, render_pod, render_replica_pods
from gpufabric.rendering.services import render_client_service, render_replica_service
from gpufabric.rendering.template import template_hash

__all__ = [
    "client_service_name",
    "engine_command",
    "engine_config_name",
    "pod_name",
    "render_client_service",
    "render_engine_config",
    "render_pod",
    "render_replica_pods",
    "render_replica_service",
    "replica_service_name",
    "template_hash",
]
