# One image for the API and the workers (the API never imports torch, but
# sharing the image keeps the deployment to one build).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY search ./search
COPY workers ./workers
COPY service ./service
# torch first and pinned; set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (build args)
# to a CPU-only wheel index to keep CUDA out of CPU-only worker images.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir .
ENV PRUNESEARCH_HOME=/data
EXPOSE 8000
CMD ["prunesearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
