# st-serve image: the torch-free runtime and the serve extra only (no torch, no transformers).
#   docker build -f docker/serve.Dockerfile -t st-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/minilm:/models/minilm:ro" st-serve /models/minilm --threads 4
# scripts/check_serve_env.sh builds the same environment in a venv and checks it (for machines without docker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY st_runtime ./st_runtime
RUN pip install --no-cache-dir ".[serve]" && cd / && rm -rf /src

WORKDIR /models
USER nobody
EXPOSE 8080
# Folders written by st-export are mounted under /models; every argument after the image name goes to st-serve.
ENTRYPOINT ["st-serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--help"]
