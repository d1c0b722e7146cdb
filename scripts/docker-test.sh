#!/usr/bin/env bash
# `make docker-test`: build the CPU image from this Dockerfile without any registry, run it,
# and check that it scores the examples with this host's numbers. Then remove what it made.
#
#  1. a Docker Engine: the running one, else `dockerd` started here (root) and stopped at the end
#  2. a base image with Python 3.11: BASE_IMAGE if the engine has it, else made with debootstrap
#     from Debian's packages (scripts/docker-base-image.sh) and removed at the end
#  3. the wheels this host's pip picks for torch==TORCH_VERSION and every dependency at the
#     versions of constraints.txt (`pip download`: the same sources as `pip install` here),
#     served as a package index on 127.0.0.1 (scripts/local_index.py)
#  4. `docker build --network host` with PYTHON_IMAGE, TORCH_INDEX_URL and PIP_INDEX_URL
#  5. `docker run`, published on 127.0.0.1 only; wait for the image's HEALTHCHECK to say healthy
#  6. every example through POST /score for every model, compared with `deeplense score` on
#     this host (scripts/compare_scores.py, relative tolerance 1e-6)
#
# Settings (environment): PY (host Python, default .venv/bin/python), DOCKER (client, default
# docker), DOCKER_BUILDKIT (0: classic builder, the default; 1: BuildKit), BASE_IMAGE,
# KEEP_IMAGES=1 (keep the test image and a base image made here).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DOCKER=${DOCKER:-docker}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
BASE_IMAGE=${BASE_IMAGE:-deeplense-base:bookworm-py3.11}
KEEP_IMAGES=${KEEP_IMAGES:-0}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
TAG=deeplense-anomaly:docker-test-$$
NAME=deeplense-docker-test-$$

work=$(mktemp -d /tmp/deeplense-docker-test.XXXXXX)
started_dockerd="" index_pid="" made_base="" made_tag="" made_container=""
summary=()
t0=$EPOCHREALTIME

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.0f", b - a}'; }
step() { printf '[%4s s] %s\n' "$(elapsed "$t0")" "$*"; }
note() { summary+=("$(printf '  %-11s %s' "$1" "$2")"); }
fail() { echo "docker-test: $*" >&2; exit 1; }

teardown() {
  local status=$?
  set +e
  [ -n "$made_container" ] && "$DOCKER" rm -f "$NAME" >/dev/null
  if [ "$KEEP_IMAGES" != 1 ]; then
    [ -n "$made_tag" ] && "$DOCKER" rmi "$TAG" "$TAG-builder" >/dev/null
    [ -n "$made_base" ] && "$DOCKER" rmi "$BASE_IMAGE" >/dev/null
  fi
  [ -n "$index_pid" ] && kill "$index_pid" 2>/dev/null && wait "$index_pid" 2>/dev/null
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null && wait "$started_dockerd" 2>/dev/null
  fi
  rm -rf "$work"
  local kept=""
  [ "$KEEP_IMAGES" = 1 ] && kept=" (KEEP_IMAGES=1: images kept)"
  step "torn down: ${made_container:+container $NAME, }${made_tag:+images $TAG and $TAG-builder, }${made_base:+image $BASE_IMAGE, }${started_dockerd:+dockerd (pid $started_dockerd), }local index$kept"
  if [ ${#summary[@]} -gt 0 ]; then
    echo "docker-test summary"
    printf '%s\n' "${summary[@]}"
    printf '  %-11s %s s, %s\n' total "$(elapsed "$t0")" "$([ $status -eq 0 ] && echo passed || echo FAILED)"
  fi
  exit $status
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- 1. engine ---------------------------------------------------------------------------------
[ -x "$PY" ] || fail "no $PY: run make install first"
missing=()
command -v "$DOCKER" >/dev/null || command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || fail "missing Debian packages: sudo apt-get install -y ${missing[*]}"
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no Docker Engine running and no dockerd: apt-get install -y docker.io"
  [ "$(id -u)" -eq 0 ] || fail "no Docker Engine running; start one (dockerd needs root)"
  step "no engine running: starting dockerd (log: $work/dockerd.log)"
  dockerd >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 120); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -n 20 "$work/dockerd.log" >&2; fail "dockerd did not start"; }
fi
engine=$("$DOCKER" version --format '{{.Server.Version}}')
client=$("$DOCKER" version --format '{{.Client.Version}}')
builder=$([ "$DOCKER_BUILDKIT" = 1 ] && echo BuildKit || echo "classic builder")
step "Docker Engine $engine, client $client, $builder"
note engine "Docker Engine $engine (client $client, ${started_dockerd:+dockerd started here, }$builder)"

# ---- 2. base image -----------------------------------------------------------------------------
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  note "base image" "$BASE_IMAGE (already there)"
else
  step "making base image $BASE_IMAGE with debootstrap"
  t=$EPOCHREALTIME
  made_base=1
  DOCKER=$DOCKER bash scripts/docker-base-image.sh "$BASE_IMAGE" >"$work/base.log" 2>&1 \
    || { tail -n 20 "$work/base.log" >&2; fail "base image failed"; }
  note "base image" "$BASE_IMAGE made with debootstrap in $(elapsed "$t") s"
fi
base_size=$("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE")
base_python=$("$DOCKER" run --rm "$BASE_IMAGE" python -c 'import sys; print(sys.version.split()[0])')
summary[${#summary[@]}-1]+=", Python $base_python, $((base_size / 1000000)) MB"

# ---- 3. wheels and the local index ---------------------------------------------------------------
step "downloading wheels with this host's pip (torch==$TORCH_VERSION, constraints.txt)"
t=$EPOCHREALTIME
"$PY" -m pip download -q --dest "$work/wheels" --constraint constraints.txt \
  "torch==$TORCH_VERSION" setuptools wheel . >"$work/pip.log" 2>&1 \
  || { tail -n 20 "$work/pip.log" >&2; fail "pip download failed"; }
torch_wheel=$(cd "$work/wheels" && ls torch-*.whl)
"$PY" scripts/local_index.py "$work/wheels" >"$work/index.url" 2>/dev/null &
index_pid=$!
for _ in $(seq 50); do [ -s "$work/index.url" ] && break; sleep 0.1; done
index=$(head -n 1 "$work/index.url")
[ -n "$index" ] || fail "the local index did not start"
wheel_mb=$(du -sm "$work/wheels" | cut -f1)
note wheels "$(ls "$work/wheels"/*.whl | wc -l) files, $wheel_mb MB, in $(elapsed "$t") s ($torch_wheel)"

# ---- 4. build ----------------------------------------------------------------------------------
step "building $TAG (log: $work/build.log)"
t=$EPOCHREALTIME
made_tag=1
build_args=(--network host --build-arg PYTHON_IMAGE="$BASE_IMAGE"
  --build-arg TORCH_INDEX_URL="$index" --build-arg PIP_INDEX_URL="$index")
# The builder stage gets a tag of its own, so the teardown removes its layers too (the
# classic builder leaves a finished stage as an untagged image); the second build reuses it.
{ "$DOCKER" build "${build_args[@]}" --target builder -t "$TAG-builder" . \
  && "$DOCKER" build "${build_args[@]}" -t "$TAG" .; } >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log" >&2; fail "docker build failed"; }
build_s=$(elapsed "$t")
size=$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")
torch_line=$(grep -o 'torch [0-9][^ ]* CUDA [A-Za-z0-9.]*' "$work/build.log" | tail -n 1)
note build "$build_s s, image $(awk -v s="$size" 'BEGIN {printf "%.2f", s / 1e9}') GB ($torch_line)"

# ---- 5. run and wait for healthy -----------------------------------------------------------------
step "starting $NAME"
t=$EPOCHREALTIME
made_container=1
"$DOCKER" run -d --name "$NAME" -p 127.0.0.1::8000 -e DEEPLENSE_DEVICE=cpu "$TAG" >/dev/null
port=$("$DOCKER" port "$NAME" 8000 | head -n 1 | sed 's/.*://')
health=starting
for _ in $(seq 360); do
  health=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = starting ] || break
  [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.5
done
if [ "$health" != healthy ]; then
  "$DOCKER" logs "$NAME" 2>&1 | tail -n 20 >&2
  fail "container not healthy ($health)"
fi
note healthy "$(elapsed "$t") s after docker run (published on 127.0.0.1:$port)"

# ---- 6. scores -----------------------------------------------------------------------------------
step "scoring the examples in the container and on this host"
t=$EPOCHREALTIME
shopt -s nullglob
examples=(examples/*.fits examples/*.npy examples/*.png)
# The image serves the service's default set, Model R's (app/settings.py, the Dockerfile's ENV).
"$PY" scripts/compare_scores.py --url "http://127.0.0.1:$port" --checkpoints checkpoints/model_r \
  "${examples[@]}" | tee "$work/compare.log"
status=${PIPESTATUS[0]}
note scores "$(grep 'numbers compared' "$work/compare.log") in $(elapsed "$t") s"
note example "$(grep -m 1 'e\.g\. .* vort_0\.fits' "$work/compare.log" | sed 's/^ *e\.g\. //')"
[ "$status" -eq 0 ] || fail "the container's scores differ from the host's"
