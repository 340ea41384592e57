# syntax=docker/dockerfile:1
# Two targets from one source tree:
#   docker build --target serve -t modalrec-serve .   # FastAPI + FAISS + onnxruntime, no torch
#   docker build --target train -t modalrec-train .   # torch trainer (CUDA-capable wheels from PyPI)

FROM python:3.11-slim AS source
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
COPY trainer ./trainer

FROM python:3.11-slim AS serve-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=source /app /app
RUN pip install -c /app/constraints.txt "/app[serve]" && pip uninstall -y modalrec

FROM python:3.11-slim AS serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    MODALREC_HOST=0.0.0.0 MODALREC_PORT=8000 MODALREC_BUNDLE_ROOT=/bundles OMP_NUM_THREADS=1
RUN useradd --system --uid 10001 modalrec
WORKDIR /app
COPY --from=serve-deps /opt/venv /opt/venv
COPY --from=source /app/service ./service
USER modalrec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["python", "-m", "service"]

FROM python:3.11-slim AS train
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY --from=source /app /app
# serve extras too: the export step builds the FAISS index (service.index.build_index_file)
RUN pip install -c /app/constraints.txt -e "/app[train,serve]"
CMD ["python", "-m", "trainer", "--help"]
