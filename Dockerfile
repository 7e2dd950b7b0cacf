# recsvc: slim runtime image, non-root, with a health check.
#   docker build -t recsvc .
#   docker run -p 8000:8000 -e RECSVC_API_KEYS='{"change-me-please": ["admin","read","ingest"]}' \
#     -e RECSVC_DATABASE_URL=postgresql+asyncpg://user:pass@db:5432/recsvc -v recsvc-models:/data/models recsvc
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# libgomp1: OpenMP runtime used by implicit's ALS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 recsvc \
    && mkdir -p /data/models \
    && chown recsvc /data /data/models
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER recsvc
WORKDIR /data
ENV PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    RECSVC_DATABASE_URL=sqlite+aiosqlite:////data/recsvc.db \
    RECSVC_MODELS_DIR=/data/models
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["recsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
