# syntax=docker/dockerfile:1.7
#
# Three images from one file (docs/deploy.md, "Images" and "GPU workers on RunPod"):
#
#   docker build --target api        -t registry.fly.io/stemfleet:TAG .           # API + scaler
#   docker build --target worker     -t registry.fly.io/stemfleet-workers:TAG .   # Demucs worker
#   docker build --target gpu-worker -t ghcr.io/OWNER/stemfleet-gpu-worker:TAG .  # RunPod pods
#
# api:    python:3.12-slim + `pip install .` (no torch, no demucs): the control plane.
# worker: a CUDA base, torch built for CUDA, demucs, and the model's weights fetched at build time
#         into /models (STEMFLEET_MODEL_REPO), so a cold start reads them from the image and never
#         waits on the hub. CPU-only fleets (Fly today) may build with
#         --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a far smaller image;
#         torch's CUDA build also runs on CPU when no GPU is present. TORCH_SPEC is the whole
#         torch requirement (version and index), e.g. for hosts whose driver reports CUDA 12.8:
#         --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# gpu-worker: the worker for GPU pods (RunPod): the build fails unless its torch is a CUDA build,
#         and the worker refuses to run without a usable GPU (STEMFLEET_REQUIRE_GPU: the reason
#         goes on its `workers` row and it exits 3, so the scaler replaces the pod).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STEMFLEET_MIGRATIONS_DIR=/app/supabase/migrations \
    STEMFLEET_MACHINE_TEMPLATE=/app/deploy/worker-machine.json \
    STEMFLEET_API_HOST=:: \
    STEMFLEET_API_PORT=8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY scaler ./scaler
# The base install: API, scaler and CLI. The `worker` extra (torch, demucs) is left out.
RUN pip install . && useradd --system --uid 10001 --create-home stemfleet
# Read at run time from these paths (see ENV above): the release command migrates from here and
# the scaler creates worker machines from the template.
COPY supabase/migrations ./supabase/migrations
COPY deploy ./deploy

USER stemfleet
EXPOSE 8000
CMD ["stemfleet", "api"]

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker

# torch's CUDA wheels ship their own cuBLAS / cuDNN / NCCL; the CUDA base image adds the driver
# compatibility layer and cudart without duplicating those (the -runtime flavour would, ~3 GB).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG STEMFLEET_MODEL=htdemucs
ARG TORCH_SPEC="torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ffmpeg decodes what libsndfile cannot (m4a/aac and friends); the worker uses it when present.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, from the CUDA index: the `worker` extra then finds it installed and pip never
# picks a torch build by itself. Then demucs, then the weights: these layers change rarely, so
# a code change rebuilds only the last layers.
RUN pip install ${TORCH_SPEC}
RUN pip install "demucs>=4.1,<4.2"

WORKDIR /app
COPY scripts/fetch_model.py ./scripts/fetch_model.py
RUN HF_HOME=/tmp/hf python scripts/fetch_model.py --model "${STEMFLEET_MODEL}" --dest /models \
    && rm -rf /tmp/hf

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY scaler ./scaler
RUN pip install ".[worker]" && useradd --system --uid 10001 --create-home stemfleet
COPY supabase/migrations ./supabase/migrations

ENV STEMFLEET_MODEL=${STEMFLEET_MODEL} \
    STEMFLEET_MODEL_REPO=/models \
    STEMFLEET_MIGRATIONS_DIR=/app/supabase/migrations \
    HF_HUB_OFFLINE=1

USER stemfleet
CMD ["stemfleet", "worker"]

# ---------------------------------------------------------------------------------------------
FROM worker AS gpu-worker

# A CPU-only torch here would run Demucs ten times slower without an error: refuse to build it.
RUN python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'TORCH_SPEC gave a CPU-only torch ' + torch.__version__)"

ENV STEMFLEET_DEVICE=cuda \
    STEMFLEET_REQUIRE_GPU=true \
    STEMFLEET_WORKER_PROVIDER=runpod

USER stemfleet
CMD ["stemfleet", "worker"]
