#!/usr/bin/env bash
# End-to-end proof on a real Docker engine: build the images, bring the CPU stack of docker-compose.yml up
# (with docker/compose.test.yml: weights cache seeded from ../shared/weights/cifar10, export offline, API on
# 127.0.0.1 through host networking), wait until Docker reports it healthy, classify real images over HTTP,
# check the export job is idempotent, then tear everything down, volumes included.
#
#   docker/smoke-test.sh
#
# Needs: a reachable Docker engine with BuildKit (buildx, or a pre-23 client with DOCKER_BUILDKIT=1),
# `docker compose` (v2) or `docker-compose` (>= 1.29), python3, and ../shared. Installs nothing on the host.
# Without Docker Hub it builds a Debian base image with docker/build-base-debian.sh (root + debootstrap).
# Settings (environment): BASE_IMAGE, PIP_INDEX_URL, PIP_CA_BUNDLE (CA file pip must trust inside the build),
# TORCH_INDEX_URL, SHARED_DIR, SMOKE_KEEP=1 (leave the stack up), SMOKE_BUILD_GPU=1 (also build serve:gpu).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
SHARED_DIR="$(cd "${SHARED_DIR:-$REPO/../shared}" 2>/dev/null && pwd)" || { echo "smoke: no ../shared folder" >&2; exit 2; }
PROJECT="${SMOKE_PROJECT:-resnet-serve-smoke}"
PREFIX="${RESNET_SERVE_IMAGE_PREFIX:-resnet-serve}"
HUB_BASE="python:3.11-slim-bookworm"
LOCAL_BASE="resnet-serve/base:bookworm"

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# --- tools ---------------------------------------------------------------------------------------------
docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info failed)"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi
command -v python3 >/dev/null || die "python3 is needed for the HTTP checks"

# BuildKit is needed for the secret and bind mounts. Docker 23+ clients build with it only through the
# buildx plugin; older clients (Debian's docker.io 20.10) have it built in behind DOCKER_BUILDKIT=1.
pick_builder() {
    local candidate major
    for candidate in $(type -ap docker); do
        if "$candidate" buildx version >/dev/null 2>&1; then
            BUILDER=("$candidate" buildx build --load)
            return
        fi
        major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
        if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23)); then
            BUILDER=(env DOCKER_BUILDKIT=1 "$candidate" build)
            return
        fi
    done
    die "no docker client that can build with BuildKit (install the buildx plugin)"
}
pick_builder

# --- inputs --------------------------------------------------------------------------------------------
WEIGHTS_DIR="$SHARED_DIR/weights/cifar10"
PHOTO="$SHARED_DIR/data/photos/chelsea.jpg"
CIFAR_DIR="$SHARED_DIR/data/cifar10-sample"
for needed in "$WEIGHTS_DIR" "$PHOTO" "$CIFAR_DIR/cat/0000.jpg"; do
    [[ -e "$needed" ]] || die "$needed is missing"
done

# The base image: given, or Docker Hub's, or one built from Debian packages when no registry answers.
if [[ -z "${BASE_IMAGE:-}" ]]; then
    if docker image inspect "$HUB_BASE" >/dev/null 2>&1 || timeout 60 docker pull -q "$HUB_BASE" >/dev/null 2>&1; then
        BASE_IMAGE="$HUB_BASE"
    else
        if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
            log "no registry answers for $HUB_BASE: building $LOCAL_BASE from Debian packages"
            "$REPO/docker/build-base-debian.sh" "$LOCAL_BASE"
        fi
        BASE_IMAGE="$LOCAL_BASE"
    fi
fi

BUILD_ARGS=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -n "${PIP_INDEX_URL:-}" ]] && BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
PIP_CA_BUNDLE="${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
if [[ -s "$PIP_CA_BUNDLE" ]]; then
    BUILD_ARGS+=(--secret "id=pip_ca,src=$PIP_CA_BUNDLE")
fi

# torch's CPU wheel from a local wheelhouse when the host has one (pip's find-links); else PyTorch's index.
EXPORT_ARGS=()
for wheelhouse in ${PIP_FIND_LINKS:-}; do
    for wheel in "$wheelhouse"/torch-*+cpu-*.whl; do
        [[ -f "$wheel" ]] || continue
        ln -f "$wheel" "$REPO/docker/wheels/" 2>/dev/null || cp -f "$wheel" "$REPO/docker/wheels/"
        EXPORT_ARGS=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}")
    done
done
if [[ ${#EXPORT_ARGS[@]} -eq 0 && -n "${TORCH_INDEX_URL+set}" ]]; then
    EXPORT_ARGS=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

# --- build ---------------------------------------------------------------------------------------------
build() {  # tag dockerfile extra-args...
    local tag="$1" dockerfile="$2" started
    shift 2
    started="$(now)"
    log "building $tag (base $BASE_IMAGE)"
    "${BUILDER[@]}" "${BUILD_ARGS[@]}" "$@" -f "$dockerfile" -t "$tag" . >"$LOGS/build-${tag//[\/:]/_}.log" 2>&1 \
        || { tail -40 "$LOGS/build-${tag//[\/:]/_}.log" >&2; die "building $tag"; }
    log "built $tag in $(elapsed "$started") s: $(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=si)B"
}
LOGS="$(mktemp -d /tmp/resnet-serve-smoke.XXXXXX)"
build "$PREFIX/export:latest" docker/Dockerfile.export "${EXPORT_ARGS[@]}"
build "$PREFIX/serve:cpu" docker/Dockerfile.serve --build-arg ORT_PACKAGE=onnxruntime==1.31.1
if [[ "${SMOKE_BUILD_GPU:-0}" == 1 ]]; then
    build "$PREFIX/serve:gpu" docker/Dockerfile.serve
fi

# --- up --------------------------------------------------------------------------------------------------
SMOKE_PORT="${SMOKE_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export SMOKE_PORT SMOKE_WEIGHTS_DIR="$WEIGHTS_DIR" RESNET_SERVE_WEIGHTS_DIR="$WEIGHTS_DIR"
export RESNET_SERVE_MODELS_CONFIG=./docker/models.smoke.toml
export RESNET_SERVE_IMAGE_PREFIX="$PREFIX"
STACK=("${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker/compose.test.yml)
if [[ "${COMPOSE[0]}" == docker-compose ]]; then
    # Compose v1 (docker-py) refuses published ports on a host-network service where v2 discards them with
    # a warning: give v1 the resolved configuration of the same two files without them.
    "${STACK[@]}" config | python3 -c '
import sys, yaml
config = yaml.safe_load(sys.stdin)
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
yaml.safe_dump(config, sys.stdout, sort_keys=False)' >"$LOGS/compose.v1.yml" \
        || die "resolving the compose files for docker-compose v1 (needs python3 with PyYAML)"
    STACK=(docker-compose -p "$PROJECT" --project-directory "$REPO" -f "$LOGS/compose.v1.yml")
fi

teardown() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        "${STACK[@]}" logs --no-color >"$LOGS/stack.log" 2>&1 || true
        echo "---- last stack logs ($LOGS/stack.log) ----" >&2
        tail -40 "$LOGS/stack.log" >&2 || true
    fi
    if [[ "${SMOKE_KEEP:-0}" == 1 ]]; then
        log "SMOKE_KEEP=1: stack left up (port $SMOKE_PORT); remove it with: ${STACK[*]} down -v"
    else
        "${STACK[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
        log "stack and its volumes removed"
    fi
    exit $status
}
trap teardown EXIT
"${STACK[@]}" down -v --remove-orphans >/dev/null 2>&1 || true

log "up: ${STACK[*]} up -d api-cpu (API on 127.0.0.1:$SMOKE_PORT)"
UP_STARTED="$(now)"
"${STACK[@]}" up -d api-cpu >"$LOGS/up.log" 2>&1 || { cat "$LOGS/up.log" >&2; die "compose up"; }
API_CONTAINER="$("${STACK[@]}" ps -q api-cpu)"
[[ -n "$API_CONTAINER" ]] || die "no api-cpu container"
health=""
for _ in $(seq 1 300); do
    health="$(docker inspect --format '{{.State.Health.Status}}' "$API_CONTAINER")"
    [[ "$health" == healthy ]] && break
    [[ "$(docker inspect --format '{{.State.Status}}' "$API_CONTAINER")" == running ]] || die "api-cpu stopped"
    sleep 1
done
[[ "$health" == healthy ]] || die "api-cpu not healthy after 300 s (last: $health)"
log "healthy $(elapsed "$UP_STARTED") s after 'up' (includes seeding the cache and the export)"
echo "---- export job ----"
"${STACK[@]}" logs --no-color export 2>&1 | grep -v "^Attaching to" | sed -e 's/^[^|]*| //'

# --- checks ----------------------------------------------------------------------------------------------
[[ "$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "$API_CONTAINER")" == "true 10001:10001" ]] \
    || die "api-cpu must run read-only as uid 10001"
echo "---- HTTP checks on 127.0.0.1:$SMOKE_PORT ----"
python3 "$REPO/docker/smoke_checks.py" "http://127.0.0.1:$SMOKE_PORT" "$PHOTO" "$CIFAR_DIR" \
    || die "HTTP checks"

echo "---- export again (a later 'docker compose up') ----"
"${STACK[@]}" run --rm export >"$LOGS/export-again.log" 2>&1 || { cat "$LOGS/export-again.log" >&2; die "export re-run"; }
grep -E 'unchanged|exported|FAILED' "$LOGS/export-again.log" | sed -e 's/^/  /'
grep -q ' unchanged ' "$LOGS/export-again.log" || die "the second export run did not find the model unchanged"

for image in "$PREFIX/export:latest" "$PREFIX/serve:cpu"; do
    log "image $image: $(docker image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B"
done
log "PASSED"
