# syntax=docker/dockerfile:1
# lift3d on NVIDIA GPUs: the Ray Serve graph (graph.py) under KubeRay (k8s/), `lift3d batch` on Ray Data, and the
# `lift3d` CLI. How to build, where the weights go and how to push: docs/deployment.md ("Building the image").
# tests/test_dockerfiles.py lints this file with hadolint and checks the pins below against the Makefile and k8s/.
#
#     docker build -t ghcr.io/lift3d/lift3d:<tag> .
#
# Which CUDA. torch 2.13 publishes Linux CUDA wheels for CUDA 12.6 and 13.0 (stable) and 13.2 (experimental), one
# index each: https://download.pytorch.org/whl/cu126, .../cu130, .../cu132 (PyTorch's RELEASE.md compatibility
# matrix; CUDA 12.8 left the matrix in 2.12). cu126 is used: it has kernels for the A10G (sm_86) and runs on any
# R525+ driver (CUDA 12 minor-version compatibility), as current GPU node images have, while cu130 needs
# R580+. CUDA_TAG (the base image) and TORCH_CUDA (the wheel index) must name the same CUDA major.minor: the
# builder stage stops on a mismatch, and the test checks the defaults.
#
# Why the `base` flavour of nvidia/cuda (CUDA runtime + the container toolkit's environment) and not `runtime` or
# `cudnn-runtime`: the torch wheel brings its own cuBLAS, cuDNN, NCCL, … as pip packages (nvidia-*-cu12) and loads
# those, so the bigger flavours would only add gigabytes of copies. There is no CUDA compiler either, hence no
# `cuda` extra: nerfacc compiles a CUDA extension on first use, and without it the NeRF uses its PyTorch sampler.
#
# Weights are not in the image. Every model loads from local files only (lift3d/stages/loading.py,
# lift3d/stages/background.py):
#   HF_HOME=/models/huggingface  Hugging Face cache for SDXL (stabilityai/stable-diffusion-xl-base-1.0) and
#                                Stable Zero123 (ashawkey/stable-zero123-diffusers); HF_HUB_CACHE overrides its hub/.
#   REMBG_HOME=/models/rembg     rembg's ONNX files (u2net.onnx); U2NET_HOME is also searched when set.
#   HF_HUB_OFFLINE=1             never ask the Hub: a missing model fails at replica start, within seconds, with a
#                                message naming the model and the fix. Set it to 0 to let a container download
#                                what it misses into HF_HOME (SDXL alone is ~14 GB of fp32 files).
# /models is a VOLUME: mount a pre-populated volume there (docs/deployment.md shows how to fill one).
#
# No HEALTHCHECK: Kubernetes ignores Docker health checks, and KubeRay gives every Ray pod its own readiness and
# liveness probes (exec probes running `wget` against the raylet/dashboard agent and, for Serve, the proxy), which
# is why wget is installed. KubeRay starts containers with `/bin/bash -lc -- "ray start …"` (older releases) or
# `bash -c`, so bash is needed and the venv is also put on PATH in /etc/profile.d for login shells. The image's Ray
# must be the cluster's `rayVersion` (RAY_VERSION; the test compares it with k8s/).

ARG CUDA_TAG=12.6.3

# ---- base: Python, the runtime libraries, the user; shared by builder and runtime so the venv's python matches --
# Ubuntu 24.04 is fixed, not a build argument: the apt pins below are its versions.
FROM nvidia/cuda:${CUDA_TAG}-base-ubuntu24.04 AS base

# Versions are pinned to the upstream release Ubuntu 24.04 ships (the glob takes its latest security update):
# python3.12 is the distribution's Python; libpq5 is the client library the pure-Python psycopg loads for
# PostgreSQL (postgresql+psycopg://); wget serves KubeRay's probes; libgl1 and libglib2.0 are what
# opencv-python (pulled in by rtmlib, the pose detector) loads at import. ca-certificates comes with nvidia/cuda.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        'python3.12=3.12.3-*' \
        'libpq5=16.*' \
        'wget=1.21.4-*' \
        'libgl1=1.7.0-*' \
        'libglib2.0-0t64=2.80.*' \
    && rm -rf /var/lib/apt/lists/*

# The user Ray's own images use: `ray`, UID 1000, group `users` (GID 100), HOME=/home/ray. Ubuntu's images ship a
# user `ubuntu` with UID 1000; it is removed first.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray \
    && mkdir -p /models/huggingface /models/rembg \
    && chown -R 1000:100 /models \
    && echo "export PATH=/opt/venv/bin:\$PATH" > /etc/profile.d/lift3d-venv.sh

# ---- builder: the virtual environment in /opt/venv -----------------------------------------------------------------
FROM base AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends 'python3.12-venv=3.12.3-*' \
    && rm -rf /var/lib/apt/lists/*

ARG CUDA_TAG
# torch: the Makefile's pin (`torch==2.13.0`), CUDA build from the PyTorch index named by TORCH_CUDA.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu126
# Ray: the cluster's rayVersion (k8s/rayservice.yaml); pyproject.toml only asks for ray>=2.40.
ARG RAY_VERSION=2.60.0
ARG PIP_VERSION=26.3

RUN major_minor="${CUDA_TAG%.*}" \
    && want="cu${major_minor%%.*}${major_minor#*.}" \
    && if [ "${want}" != "${TORCH_CUDA}" ]; then \
        echo "TORCH_CUDA=${TORCH_CUDA} does not match the base image's CUDA ${CUDA_TAG} (want ${want})" >&2; \
        exit 1; \
    fi \
    && python3.12 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && /opt/venv/bin/python -m pip install --no-cache-dir \
        --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"

# The project and its serve + batch extras; torch is already satisfied, so pip keeps the CUDA build.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lift3d/ lift3d/
COPY nerf/ nerf/
COPY deployments/ deployments/
COPY batch_jobs/ batch_jobs/
RUN /opt/venv/bin/python -m pip install --no-cache-dir ".[serve,batch]" "ray==${RAY_VERSION}"

# ---- runtime ---------------------------------------------------------------------------------------------------
FROM base AS runtime

LABEL org.opencontainers.image.title="lift3d" \
      org.opencontainers.image.description="Image/text to 3D asset service on Ray Serve (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/venv /opt/venv

# The repository at /app, as k8s/rayservice.yaml expects (workingDir /app, graph:build_app). Owned by root: the
# service cannot change its own code. PYTHONPATH makes graph.py and the packages importable from any directory,
# and this copy of lift3d/ is the one imported (the venv's copy only provides the entry points).
WORKDIR /app
COPY pyproject.toml README.md graph.py serve_config.yaml serve_config.local.yaml ./
COPY lift3d/ lift3d/
COPY nerf/ nerf/
COPY deployments/ deployments/
COPY batch_jobs/ batch_jobs/

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    REMBG_HOME=/models/rembg \
    HF_HUB_OFFLINE=1

VOLUME ["/models"]

# Serve HTTP, Ray GCS, Ray dashboard, Prometheus metrics (metrics-export-port in k8s/).
EXPOSE 8000 6379 8265 8080

USER 1000:100

CMD ["lift3d", "--help"]
