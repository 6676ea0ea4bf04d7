"""GPU Fabric Operator: places LLM agent-inference fleets on mixed-vendor GPU clusters over RoCE."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpu-fabric-operator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0+unknown"
