"""How the e2e suite finds its Kubernetes binaries: $KUBEBUILDER_ASSETS first, then .tools/, then the
checked archives in ../shared/kube/; and one line naming what is missing when none has them."""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path

import pytest

from gpufabric.sandbox.controlplane import (
    CLIENT_BINARIES,
    CONTROL_PLANE_BINARIES,
    ControlPlaneUnavailableError,
    find_binaries,
)

NAMES = CONTROL_PLANE_BINARIES + CLIENT_BINARIES


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_kubebuilder_assets_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "assets"
    for name in NAMES:
        executable(assets / name)
        executable(tmp_path / "tools" / "kube" / "bin" / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    found = find_binaries(tmp_path / "tools", tmp_path / "shared")
    assert found == {name: assets / name for name in NAMES}


def test_each_binary_is_looked_for_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup-envtest brings etcd, kube-apiserver and kubectl but no scheduler or controller manager."""
    assets = tmp_path / "assets"
    for name in ("etcd", "kube-apiserver", "kubectl"):
        executable(assets / name)
    for name in ("kube-scheduler", "kube-controller-manager"):
        executable(tmp_path / "tools" / "kube" / "bin" / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    found = find_binaries(tmp_path / "tools", tmp_path / "shared")
    assert found["etcd"] == assets / "etcd"
    assert found["kube-scheduler"] == tmp_path / "tools" / "kube" / "bin" / "kube-scheduler"


def test_shared_archives_are_checked_and_unpacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    tools, shared = tmp_path / "tools", tmp_path / "shared"
    executable(tools / "etcd" / "usr" / "bin" / "etcd")
    executable(tools / "kube" / "bin" / "kubectl")
    shared.mkdir()
    sums = []
    for name in ("kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        (shared / f"{name}.xz").write_bytes(lzma.compress(f"binary {name}".encode()))
        sums.append(f"{hashlib.sha256((shared / f'{name}.xz').read_bytes()).hexdigest()}  {name}.xz")
    (shared / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    found = find_binaries(tools, shared)
    assert found["kube-apiserver"].read_text() == "binary kube-apiserver"
    assert found["kube-apiserver"].parent == tools / "kube" / "bin"


def test_a_tampered_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "etcd.xz").write_bytes(lzma.compress(b"not what was signed"))
    (shared / "SHA256SUMS").write_text(f"{'0' * 64}  etcd.xz\n")
    with pytest.raises(ControlPlaneUnavailableError, match="does not match"):
        find_binaries(tmp_path / "tools", shared)


def test_nothing_found_is_one_line_naming_what_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(ControlPlaneUnavailableError) as caught:
        find_binaries(tmp_path / "tools", tmp_path / "shared")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl in ")
    assert str(tmp_path / "tools") in message
    assert "make tools" in message
