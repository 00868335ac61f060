# syntax=docker/dockerfile:1
# draftlink link shaper (draftlink-link): a shaped TCP relay, edge -> cloud. No torch, no models:
# the project is installed without dependencies, plus the few the relay imports.
# Build from the repository root:  docker build -f deploy/docker/link.Dockerfile -t draftlink-link .
# Configure only through DRAFTLINK_LINK_* env (rates in bits/s); see deploy/link-shaping.md.

ARG BASE_IMAGE=python:3.11-slim

# Offline builds (deploy/README.md, "Podman"): `--build-context wheelhouse=DIR` replaces this stage
# with a directory of wheels and OFFLINE=1 makes pip install from it alone (--no-index). Unreplaced,
# it is only the base image (mounted at /wheelhouse, unread): valid for every builder.
FROM ${BASE_IMAGE} AS wheelhouse

FROM ${BASE_IMAGE} AS builder
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/draftlink/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common/ common/
COPY link/ link/
# Same lower bounds as pyproject's dependencies (tests/component/test_deploy_static.py checks them).
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    if [ "${OFFLINE}" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && python -m venv /opt/draftlink \
    && pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir "numpy>=1.26" "prometheus-client>=0.21" "uvloop>=0.21"

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 draftlink \
    && useradd --system --uid 10001 --gid draftlink --no-create-home draftlink
COPY --from=builder /opt/draftlink /opt/draftlink
ENV PATH=/opt/draftlink/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DRAFTLINK_LINK_LISTEN=0.0.0.0:50052 \
    DRAFTLINK_LINK_METRICS_PORT=9103
USER 10001:10001
EXPOSE 50052 9103
# The relay is healthy when its /metrics endpoint answers (served by the same process).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DRAFTLINK_LINK_METRICS_PORT', '9103') + '/metrics', timeout=4)"]
ENTRYPOINT ["draftlink-link"]
