# The operator image. The build stage installs the project and its runtime dependencies into a virtualenv; the
# final stage copies only that virtualenv onto the same slim Python, so no pip cache, compiler or build tool ships.
# Checked without a container engine by tests/unit/test_image.py (hadolint, the final stage, and the wheel built
# from exactly what is copied below, installed into a clean virtualenv).
#
# Pinned by tag only: the release pipeline pins both FROM lines by digest (@sha256:...), which needs a registry to
# resolve. Both stages must use the same image: the virtualenv's python is a symlink to the base's interpreter.
FROM python:3.11-slim-bookworm AS build

# --without-pip and `pip --python`: the base's pip installs into the venv, so the venv never holds pip or setuptools.
RUN python -m venv --without-pip /opt/gpufabric
WORKDIR /src
# What the wheel is built from (pyproject.toml names README.md as the long description and LICENSE as its
# license file); nothing else is needed.
COPY pyproject.toml README.md LICENSE ./
COPY operator ./operator
# Versions come from pyproject.toml's ranges; the build backend lives in pip's throwaway build environment. pip
# compiles the bytecode here, because the final image cannot write it.
RUN pip --python /opt/gpufabric/bin/python install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim-bookworm

# source: the project's address as the chart names it (image.repository, runbookUrl); the release pipeline may override.
LABEL org.opencontainers.image.title="gpu-fabric-operator" \
      org.opencontainers.image.description="Kubernetes operator that places LLM agent-inference fleets on mixed-vendor GPU clusters over a RoCE fabric" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gpufabric/gpu-fabric-operator"

# No build tools at run time: drop the base's pip, setuptools and wheel. Name uid/gid 65532 (the chart's
# runAsUser/runAsGroup) so tools that look the user up find it; its home is /tmp, the chart's emptyDir.
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot

COPY --from=build /opt/gpufabric /opt/gpufabric

# The root filesystem is read-only: bytecode was compiled in the build stage, nothing writes .pyc files, logs go
# unbuffered to stdout, and HOME (kubeconfig lookups, temp files) is /tmp.
ENV PATH="/opt/gpufabric/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# 8080: Prometheus metrics (--metrics-port); 8081: /healthz (--health-port). The chart passes both flags.
EXPOSE 8080 8081

USER 65532:65532
ENTRYPOINT ["gpufabric", "operator"]
