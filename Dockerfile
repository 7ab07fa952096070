# syntax=docker/dockerfile:1
# One image for every role: `mfserve api`, `mfserve worker`, `mfserve migrate`.
#   CPU (default):  docker build -t mfserve .
#   CUDA:           docker build -t mfserve:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the chosen index (CPU or CUDA), so installing the project keeps that build
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN pip install .

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 mfserve \
    && useradd --system --uid 10001 --gid mfserve --home-dir /app --shell /usr/sbin/nologin mfserve \
    && mkdir -p /data/artifacts \
    && chown -R mfserve:mfserve /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# the source tree beside the installed package: Alembic reads [tool.alembic] and migrations/ from here
COPY --chown=mfserve:mfserve pyproject.toml ./
COPY --chown=mfserve:mfserve service ./service
COPY --chown=mfserve:mfserve migrations ./migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    MFSERVE_HOST=0.0.0.0 \
    MFSERVE_PORT=8000 \
    MFSERVE_ARTIFACT_DIR=/data/artifacts \
    MFSERVE_CACHE_DIR=/data/cache \
    MFSERVE_AUTH=keys
USER mfserve
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MFSERVE_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["mfserve"]
CMD ["api"]
