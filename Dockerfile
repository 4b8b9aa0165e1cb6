# syntax=docker/dockerfile:1.7
# One image per stage, each with only its own dependencies from uv.lock:
#   docker build --target convert  -t geozarr-convert .
#   docker build --target register -t geozarr-register .
#   docker build --target augment  -t geozarr-augment .
#   docker build --target failures -t geozarr-failures .
# Each runs as a non-root user and serves on $PORT (Knative sets it; 8080 by default).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The same uv as the Makefile's `pip install uv==...` (tests/knative/test_dockerfile.py checks).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# Workspace metadata only: lets each target resolve its own slice of the lock file.
FROM ${PYTHON_IMAGE} AS workspace
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.12 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock .python-version README.md ./
COPY shared/pyproject.toml shared/pyproject.toml
# The local stand-ins' member: its metadata only, so the workspace resolves; no image installs it.
COPY local/pyproject.toml local/pyproject.toml
COPY functions/convert/pyproject.toml functions/convert/pyproject.toml
COPY functions/register/pyproject.toml functions/register/pyproject.toml
COPY functions/augment/pyproject.toml functions/augment/pyproject.toml

FROM workspace AS build-convert
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package geozarr-convert
COPY shared shared
COPY functions/convert functions/convert
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package geozarr-convert

FROM workspace AS build-register
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package geozarr-register
COPY shared shared
COPY functions/register functions/register
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package geozarr-register

FROM workspace AS build-augment
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package geozarr-augment
COPY shared shared
COPY functions/augment functions/augment
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package geozarr-augment

# The failure recorder: the shared package and boto3 (its s3 extra), nothing else.
FROM workspace AS build-failures
COPY shared shared
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package geozarr-pipeline-shared --extra s3

# The runtime base: no uv, no sources, no compilers; an unprivileged user without a home.
# HOME=/tmp: the one writable path on the read-only root filesystem (an emptyDir in every
# Service), for libraries that write caches or read config under ~.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home app
ENV PATH=/app/.venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
WORKDIR /app
EXPOSE 8080

FROM runtime AS convert
COPY --from=build-convert /app/.venv /app/.venv
COPY functions/convert/geozarr_convert /app/functions/convert/geozarr_convert
USER 10001:10001
CMD ["sh", "-c", "exec functions-framework --target handle --source /app/functions/convert/geozarr_convert/main.py --host 0.0.0.0 --port ${PORT}"]

FROM runtime AS register
COPY --from=build-register /app/.venv /app/.venv
COPY functions/register/geozarr_register /app/functions/register/geozarr_register
USER 10001:10001
CMD ["sh", "-c", "exec functions-framework --target handle --source /app/functions/register/geozarr_register/main.py --host 0.0.0.0 --port ${PORT}"]

FROM runtime AS augment
COPY --from=build-augment /app/.venv /app/.venv
COPY functions/augment/geozarr_augment /app/functions/augment/geozarr_augment
USER 10001:10001
CMD ["sh", "-c", "exec functions-framework --target handle --source /app/functions/augment/geozarr_augment/main.py --host 0.0.0.0 --port ${PORT}"]

FROM runtime AS failures
COPY --from=build-failures /app/.venv /app/.venv
USER 10001:10001
CMD ["sh", "-c", "exec python -m geozarr_pipeline.failures.recorder --host 0.0.0.0 --port ${PORT}"]
