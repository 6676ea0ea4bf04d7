# The operator image: a wheel built in one stage, installed into a slim runtime that runs as non-root.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# 65532 is the conventional "nonroot" uid of distroless images; the chart's securityContext matches it.
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin gpufabric
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["gpufabric"]
CMD ["operator", "--all-namespaces"]
