# recsvc: slim runtime image, non-root, with a health check.
#   docker build -t recsvc .
#   docker run -p 8000:8000 -e RECSVC_API_KEYS='{"change-me-please": ["admin","read","ingest"]}' \
#     -e RECSVC_DATABASE_URL=postgresql+asyncpg://user:pass@db:5432/recsvc -v recsvc-models:/data/models recsvc
# With PostgreSQL and a trainer: docker-compose.yml (README, "Running in production").
# Both stages use the same pinned base image (the virtualenv's python links to it): change the
# tag in both FROM lines together. Builds with BuildKit and with the classic builder.

# Build stage: recsvc and its dependencies installed into a virtualenv (binary wheels only for
# the dependencies; recsvc itself is built from this source).
FROM python:3.13.16-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/recsvc
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN /opt/recsvc/bin/pip install --only-binary=:all: --no-binary=recsvc .

# Runtime stage: the virtualenv only; no build files, no wheel cache.
FROM python:3.13.16-slim-bookworm
# libgomp1: OpenMP runtime used by implicit's ALS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 recsvc \
    && useradd --create-home --uid 10001 --gid recsvc recsvc \
    && mkdir -p /data/models \
    && chown recsvc:recsvc /data /data/models
COPY --from=build /opt/recsvc /opt/recsvc
USER 10001:10001
WORKDIR /data
ENV PATH=/opt/recsvc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    RECSVC_DATABASE_URL=sqlite+aiosqlite:////data/recsvc.db \
    RECSVC_MODELS_DIR=/data/models
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["recsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
