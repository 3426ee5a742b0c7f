# syntax=docker/dockerfile:1
# CPU image of the SPA Localizer service. It serves the two bundled models (the real-photo one the
# default); mount your own model directory at /models and set SPA_MODEL_DIRS=/models to serve it.
#   docker build -t spa-localizer . && docker run --rm -p 8000:8000 --read-only --tmpfs /tmp spa-localizer

# --- build: the project's own wheel (the bundled models inside; no torch, nothing from export/) ---
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
COPY models ./models
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the locked dependencies (requirements/serve.txt: exact versions, sha256-checked, wheels
# only) and the project's wheel in a venv, less what only the offline tools (spa_service.offline: spa-eval,
# spa-batch, spa-synth) and the export side (spa_export) need; a non-root user ---
FROM python:3.11-slim AS runtime
# Bytecode is written for what the server imports, by importing it once (pip would compile every module
# of every package, their tests included: 33 MB); anything else compiles in memory if ever imported.
ARG BYTECODE_FOR="import spa_service.http.cli, spa_service.http.app, uvicorn.main, uvicorn.loops.asyncio, \
uvicorn.protocols.http.h11_impl, uvicorn.lifespan.on, multipart"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/spa/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements/serve.txt,target=/tmp/requirements.txt \
    python -m venv /opt/spa \
    && /opt/spa/bin/pip install --require-hashes --only-binary :all: --no-deps --no-compile -r /tmp/requirements.txt \
    && /opt/spa/bin/pip install --no-index --no-deps --no-compile /wheels/*.whl \
    && /opt/spa/bin/pip check \
    && rm -r /opt/spa/lib/python3.11/site-packages/spa_service/offline /opt/spa/lib/python3.11/site-packages/spa_export \
       /opt/spa/bin/spa-eval /opt/spa/bin/spa-batch /opt/spa/bin/spa-synth /opt/spa/bin/spa-export \
       /opt/spa/bin/spa-quantize /opt/spa/bin/spa-train \
    && env -u PYTHONDONTWRITEBYTECODE /opt/spa/bin/python -c "$BYTECODE_FOR" \
    && /opt/spa/bin/pip uninstall -y -q setuptools pip \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin spa
# Settings (every SPA_* variable is documented in the README). One process per container: the
# micro-batcher feeds one onnxruntime session that already uses every core the container gets.
ENV SPA_HOST=0.0.0.0 SPA_PORT=8000 SPA_SHUTDOWN_TIMEOUT_S=25
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["spa-serve"]
