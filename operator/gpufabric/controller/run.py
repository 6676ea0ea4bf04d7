"""Assemble and run the operator: kopf for watching, the reconciler for deciding and writing, a Lease for
having one active instance, Prometheus metrics and a liveness endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import kopf
from kubernetes import client
from prometheus_client import start_http_server

from gpufabric import credentials
from gpufabric.controller import kopf_scale
from gpufabric.controller.clusterwatch import Others
from gpufabric.controller.handlers import register
from gpufabric.controller.kube import Kube
from gpufabric.controller.leader import Leadership
from gpufabric.controller.reconciler import LoopSettings, Reconciler
from gpufabric.controller.scraper import Scraper, ScrapeSettings, pod_url
from gpufabric.controller.store import LearnedStore
from gpufabric.exporter import OperatorMetrics
from gpufabric.placement import PriorThroughput
from gpufabric.reconcile import Settings
from gpufabric.reconcile.passes import DEFAULT_UNSCHEDULABLE_GRACE
from gpufabric.throughput import ScrapeTarget, TokenTracker
from gpufabric.vendors import ACCELERATORS

log = logging.getLogger(__name__)
DEFAULT_OPERATOR_NAMESPACE = "gpufabric-system"
LEASE_NAME = "gpu-fabric-operator"


def default_operator_namespace() -> str:
    """The namespace the operator runs in: the downward API's, else its ServiceAccount's, else the default."""
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    if credentials.in_a_pod() and credentials.SERVICE_ACCOUNT_NAMESPACE.is_file():
        return credentials.SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_OPERATOR_NAMESPACE
    return DEFAULT_OPERATOR_NAMESPACE


@dataclass
class OperatorOptions:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    metrics_port: int | None = None
    health_port: int | None = None
    discover_nodes: bool = False
    node_grace_seconds: float = 30.0
    unschedulable_grace_seconds: float = DEFAULT_UNSCHEDULABLE_GRACE.total_seconds()
    leader_election: bool = True
    # where the Lease and the learned-throughput ConfigMap live
    operator_namespace: str = field(default_factory=default_operator_namespace)
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    lease_seconds: int = 15
    loop: LoopSettings = field(default_factory=LoopSettings)
    scrape: ScrapeSettings = field(default_factory=ScrapeSettings)
    # rates average over this many seconds; the autoscaler scales down only after this stabilisation
    tokens_window: float = 60.0
    autoscale_stabilisation: float = 300.0
    learned_save_every: float = 60.0
    # where scrapes go; tests point pods at local servers through it
    scrape_url: Callable[[ScrapeTarget], str] = pod_url


def api_client_for(configuration: client.Configuration) -> client.ApiClient:
    configuration.connection_pool_maxsize = 32  # writes run concurrently (LoopSettings.concurrency)
    return client.ApiClient(configuration)


def login_from(kubeconfig: str | None, context: str | None) -> Callable[..., kopf.ConnectionInfo]:
    """kopf's login handler: the same sources as the writes' client, read again at each call, because kopf
    logs in again after a 401 and an in-cluster token is rotated on disk."""

    def login(**_: Any) -> kopf.ConnectionInfo:
        try:
            configuration = credentials.load(kubeconfig, context)
        except credentials.CredentialsError as error:
            raise kopf.LoginError(str(error)) from None
        scheme, token = credentials.bearer_token(configuration)
        return kopf.ConnectionInfo(
            server=str(configuration.host),
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            username=configuration.username or None,
            password=configuration.password or None,
            scheme=scheme,
            token=token,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
        )

    return login


@dataclass
class Operator:
    """One operator instance; `run` blocks until `stop` is set."""

    options: OperatorOptions
    api_client: client.ApiClient
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    # how kopf logs in; by default from the same sources as `credentials.load()`
    login: Callable[..., Any] = field(default_factory=lambda: login_from(None, None))
    registry: kopf.OperatorRegistry = field(default_factory=kopf.OperatorRegistry)

    def __post_init__(self) -> None:
        self.kube = Kube(
            self.api_client,
            threads=self.options.loop.concurrency,
            on_write=lambda verb, resource: self.metrics.writes.labels(verb=verb, resource=resource).inc(),
        )
        self.tokens = TokenTracker(
            prior=PriorThroughput(dict(ACCELERATORS)),
            window=self.options.tokens_window,
            stabilisation=self.options.autoscale_stabilisation,
        )
        self.leadership = (
            Leadership(
                self.kube,
                self.options.operator_namespace,
                LEASE_NAME,
                self.options.identity,
                lease_seconds=self.options.lease_seconds,
                renew_every=max(1.0, self.options.lease_seconds / 3),
            )
            if self.options.leader_election
            else Leadership.always()
        )
        self.reconciler = Reconciler(
            kube=self.kube,
            # Placement reads per-device throughput from what the fleet has measured (a snapshot of the tracker's
            # learned table each pass), the prior elsewhere.
            settings=Settings(
                node_grace=timedelta(seconds=self.options.node_grace_seconds),
                unschedulable_grace=timedelta(seconds=self.options.unschedulable_grace_seconds),
            ),
            loop=self.options.loop,
            metrics=self.metrics,
            leadership=self.leadership,
            tokens=self.tokens,
        )
        # Others' pods and DRA objects, cluster-wide whatever namespaces are watched: devices are held
        # across namespaces.
        self.reconciler.others = Others(self.login, self.reconciler.trigger)
        self.scraper = Scraper(self.tokens, self.reconciler, self.options.scrape, url_for=self.options.scrape_url)
        self.store = LearnedStore(
            self.kube, self.options.operator_namespace, self.tokens.learned, every=self.options.learned_save_every
        )
        self.metrics.watch(lambda: self.reconciler.published)
        self.leadership.on_elected = self.reconciler.trigger
        register(self.registry, self.reconciler, discover_nodes=self.options.discover_nodes)
        kopf.on.login(registry=self.registry)(self.login)
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        self._stop = stop
        self._tasks = tasks

        @kopf.on.startup(registry=self.registry)
        async def start_loops(settings: kopf.OperatorSettings, **_: Any) -> None:
            # Watching listed namespaces, kopf would still list and watch every namespace (to match
            # patterns) and need a cluster-wide grant for it; ours are exact names, so scanning is off.
            # Startup handlers run before kopf's observers, so the setting is seen by them.
            settings.scanning.disabled = bool(self.options.namespaces)
            await self.store.load()  # what earlier runs learned: a restart does not forget it
            tasks.append(asyncio.create_task(self.leadership.run(stop), name="gpufabric-lease"))
            if self.reconciler.others is not None:
                tasks.append(asyncio.create_task(self.reconciler.others.run(stop), name="gpufabric-others"))
            tasks.append(asyncio.create_task(self.reconciler.run(stop), name="gpufabric-reconciler"))
            tasks.append(asyncio.create_task(self.scraper.run(stop), name="gpufabric-scraper"))
            tasks.append(asyncio.create_task(self.store.run(stop, self.leadership), name="gpufabric-learned-store"))

        @kopf.on.cleanup(registry=self.registry)
        async def stop_loops(**_: Any) -> None:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        @kopf.on.probe(id="reconciler", registry=self.registry)
        def reconciler_health(**_: Any) -> dict[str, Any]:
            return {
                "passes": self.reconciler.passes,
                "leading": self.leadership.leading,
                "lastError": self.reconciler.last_error,
            }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        metrics_server = None
        if self.options.metrics_port is not None:
            metrics_server, _ = start_http_server(self.options.metrics_port, registry=self.metrics.registry)
        liveness = f"http://0.0.0.0:{self.options.health_port}/healthz" if self.options.health_port else None
        # Ours, so it can be shut down: kopf runs sync handlers (the probe) in this executor and leaves
        # its threads behind when it stops, which matters wherever the process outlives the operator.
        settings = kopf.OperatorSettings()
        kopf_scale.apply()
        try:
            await kopf.operator(
                registry=self.registry,
                settings=settings,
                clusterwide=not self.options.namespaces,
                namespaces=self.options.namespaces,
                standalone=True,  # one active instance comes from our Lease, not kopf's peering
                liveness_endpoint=liveness,
                stop_flag=stop,
            )
        finally:
            # However kopf ended (stopped, or cancelled without its cleanup handlers), the lease and
            # reconcile loops end with it: a dead operator must not keep renewing the Lease.
            self._stop.set()
            for task in self._tasks:
                task.cancel()
            settings.execution.executor.shutdown(wait=True, cancel_futures=True)
            self.kube.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
