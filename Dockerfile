# DeepLense anomaly service: Python 3.11 slim, the tests' torch, the shipped checkpoints inside.
#
#   docker build -t deeplense-anomaly:cpu .                                   # CPU (default)
#   docker build --build-arg TORCH_VARIANT=cuda -t deeplense-anomaly:cuda .   # NVIDIA GPU
#   docker run --rm -p 127.0.0.1:8000:8000 deeplense-anomaly:cpu
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 -e DEEPLENSE_DEVICE=cuda deeplense-anomaly:cuda
#
# docker-compose.yml wraps both (profiles cpu and gpu); docs/docker.md says what was and was
# not run. No `# syntax=` line: BuildKit would pull that frontend from a registry, and this
# file builds with the engine's own parser (Docker Engine 20.10 or later, the classic builder
# or BuildKit), so an air-gapped host can build it (`make docker-test` does, docs/docker.md).
#
# Build arguments for a host without the public registries (all optional):
#   PYTHON_IMAGE     a local base with `python` (3.11) and pip on PATH, e.g. the one
#                    scripts/docker-base-image.sh makes with debootstrap
#   TORCH_INDEX_URL  where torch comes from (a mirror); default: PyTorch's CPU index for cpu,
#                    the default index (PIP_INDEX_URL or PyPI) for cuda
#   PIP_INDEX_URL    where everything else comes from (build dependencies included)

# Both variants start from the same slim Debian Python; only the torch wheel differs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The torch the test suite runs on: the Makefile's TORCH_PIN (tests/test_compose.py checks).
ARG TORCH_VERSION=2.13.0
# cpu: PyTorch's CPU-only wheel (no CUDA libraries, a few hundred MB).
# cuda: the default build of the package index, with its CUDA runtime as nvidia-* wheels; the
# host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
ARG TORCH_VARIANT=cpu
# Empty: the variant's own index (above).
ARG TORCH_INDEX_URL=

# ---- builder: the source tree becomes one wheel; only the wheel moves on -------------------
FROM ${PYTHON_IMAGE} AS builder
# Unset unless given: pip then uses its default index. pip reads it from the environment.
ARG PIP_INDEX_URL
WORKDIR /src
# README.md: pyproject's `readme` field, read when the wheel's metadata is built.
COPY pyproject.toml README.md ./
COPY app/ app/
COPY models/ models/
COPY deeplense/ deeplense/
COPY training/ training/
RUN python -m pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VERSION
ARG TORCH_VARIANT
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL

LABEL org.opencontainers.image.title="deeplense-anomaly" \
      org.opencontainers.image.description="Anomaly scoring service for strong gravitational lensing images" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# torch first, from TORCH_INDEX_URL or the variant's index, then the project and every other
# dependency at the exact versions of constraints.txt (the file `make` installs with) from the
# default index. The check after the install fails the build if torch is not TORCH_VERSION or
# not the variant asked for.
COPY constraints.txt /tmp/constraints.txt
COPY --from=builder /wheels /tmp/wheels
RUN torch_index="${TORCH_INDEX_URL}" \
    && case "${TORCH_VARIANT}" in \
      cpu) torch_index="${torch_index:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not ${TORCH_VARIANT}" >&2; exit 1 ;; \
    esac \
    && (if [ -n "${torch_index}" ]; then export PIP_INDEX_URL="${torch_index}"; fi \
        && python -m pip install --no-deps "torch==${TORCH_VERSION}") \
    && python -m pip install --constraint /tmp/constraints.txt "torch==${TORCH_VERSION}" /tmp/wheels/*.whl \
    && python -c "import os, torch; want, variant = os.environ['TORCH_VERSION'], os.environ['TORCH_VARIANT']; \
assert torch.__version__.split('+')[0] == want, f'torch {torch.__version__}, expected {want}'; \
assert bool(torch.version.cuda) == (variant == 'cuda'), f'torch {torch.__version__} is not the {variant} build'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && rm -rf /tmp/wheels /tmp/constraints.txt

# An unprivileged user (uid/gid 10001; USER names it by number so Kubernetes runAsNonRoot
# can check it); code and checkpoints stay root-owned, readable but not writable by it.
RUN groupadd --gid 10001 deeplense \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 deeplense

WORKDIR /app
COPY checkpoints/ /app/checkpoints/

# Settings are the service's DEEPLENSE_* environment variables (app/settings.py); these are the
# image's defaults, each overridable with `docker run -e` or compose's `environment:`.
# The service's default set, Model R's (the one for real images; app/settings.py):
# DEEPLENSE_CHECKPOINT_DIR=/app/checkpoints/model_a serves the study's Model A, model_b Model B;
# /checkpoints is where docker-compose.yml mounts a user's own checkpoints.
# DEEPLENSE_DEVICE: auto | cpu | cuda.
ENV DEEPLENSE_CHECKPOINT_DIR=/app/checkpoints/model_r \
    DEEPLENSE_DEVICE=auto

# Smoke test: the service imports with every dependency present, and the `deeplense` command
# (serve, score, ...) runs without the train extra (models load later, at start-up).
RUN python -c "import app.main" && deeplense --help >/dev/null && deeplense score --help >/dev/null

USER 10001:10001
EXPOSE 8000

# Liveness: GET /health must answer 2xx. No curl in this image, so Python's urllib does it
# (an HTTP error or refused connection raises, and the exit status 1 means unhealthy).
# Every 5 s from the start, so the container is healthy within 5 s of the service answering,
# on every engine: HEALTHCHECK --start-interval (a fast probe during the start period only)
# needs Engine 25, and Engine 20.10's parser refuses the whole file over it. A probe costs
# one short Python process (docs/docker.md has the measured cost).
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["deeplense", "serve", "--host", "0.0.0.0", "--port", "8000"]
