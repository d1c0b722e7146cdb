# DeepLense anomaly service: a CUDA-capable image with the shipped checkpoints inside.
#
#   docker build -t deeplense-anomaly .
#   docker run --rm --gpus all -p 8000:8000 deeplense-anomaly           # NVIDIA GPU
#   docker run --rm -p 8000:8000 -e DEEPLENSE_DEVICE=cpu deeplense-anomaly   # CPU only
#
# docker-compose.yml wraps both; docs/docker.md says what was and was not run.

# PyTorch's official CUDA runtime image: Ubuntu, Python 3.11 (conda at /opt/conda),
# torch 2.5.1 built for CUDA 12.4 with cuDNN 9. pyproject asks for torch>=2.3, so pip keeps
# this torch (a constraint below makes sure of it).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# ---- builder: the source tree becomes one wheel; only the wheel moves on -------------------
FROM ${BASE_IMAGE} AS builder
WORKDIR /src
# README.md: pyproject's `readme` field, read when the wheel's metadata is built.
COPY pyproject.toml README.md ./
COPY app/ app/
COPY models/ models/
COPY deeplense/ deeplense/
COPY training/ training/
RUN python -m pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

# ---- runtime -------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="deeplense-anomaly" \
      org.opencontainers.image.description="Anomaly scoring service for strong gravitational lensing images" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Install the project and its dependencies into the base's Python. The base's torch is pinned
# as a constraint, so pip can only keep it, never swap in another (multi-GB) build; the checks
# after the install fail the build if torch changed or is not a CUDA build.
COPY --from=builder /wheels /tmp/wheels
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-pin.txt \
    && python -m pip install --constraint /tmp/torch-pin.txt /tmp/wheels/*.whl \
    && python -c "import torch; pin = open('/tmp/torch-pin.txt').read().strip(); \
assert pin == 'torch==' + torch.__version__, 'pip replaced the base image torch: ' + pin; \
assert torch.version.cuda, 'torch in this image is not a CUDA build'; \
print('kept torch', torch.__version__, 'for CUDA', torch.version.cuda)" \
    && rm -rf /tmp/wheels /tmp/torch-pin.txt

# An unprivileged user (uid/gid 10001; USER names it by number so Kubernetes runAsNonRoot
# can check it); code and checkpoints stay root-owned, readable but not writable by it.
RUN groupadd --gid 10001 deeplense \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 deeplense

WORKDIR /app
COPY checkpoints/ /app/checkpoints/

# Settings are the service's DEEPLENSE_* environment variables (app/settings.py); these are the
# image's defaults, each overridable with `docker run -e` or compose's `environment:`.
# DEEPLENSE_CHECKPOINT_DIR=/app/checkpoints/model_b serves Model B; /checkpoints is where
# docker-compose.yml mounts a user's own checkpoints. DEEPLENSE_DEVICE: auto | cpu | cuda.
ENV DEEPLENSE_CHECKPOINT_DIR=/app/checkpoints/model_a \
    DEEPLENSE_DEVICE=auto

# Smoke test: the service module imports with every dependency present (models load later,
# at start-up, in the app's lifespan).
RUN python -c "import app.main"

USER 10001:10001
EXPOSE 8000

# Liveness: GET /health must answer 2xx. No curl in this image, so Python's urllib does it
# (an HTTP error or refused connection raises, and the exit status 1 means unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
