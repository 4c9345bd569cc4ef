#!/usr/bin/env bash
# End-to-end run on kind, for machines with Docker: build both images, load them into a kind cluster, install the
# chart (and `helm test` it), and run the same pytest e2e suite the test bed runs, with KUBECONFIG pointing at kind.
# The e2e suite installs its own release of the chart (image llmtrain/operator:e2e) and removes this one first.
#
#   hack/kind-e2e.sh                 # create (or reuse) the cluster, test, delete the cluster
#   KEEP_CLUSTER=1 hack/kind-e2e.sh  # leave the cluster running afterwards (kind delete cluster --name llmtrain-e2e)
#
# Needs: docker, kind, kubectl, helm, and the project venv (`make venv`). The trainer image is built on a CPU-only
# PyTorch base by default (small, laptop-friendly); set TRAINER_BASE= and TORCH_INDEX_URL= to build the CUDA one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-llmtrain-e2e}"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/charts/llmtrain-operator/Chart.yaml")"
# The names the e2e suite and the chart's defaults expect: tests/e2e installs llmtrain/operator:e2e, and jobs
# that set no image run the chart's default trainer image.
OPERATOR_IMAGE="${OPERATOR_IMAGE:-llmtrain/operator:e2e}"
TRAINER_IMAGE="${TRAINER_IMAGE:-ghcr.io/llmtrain/trainer:$APP_VERSION}"
TRAINER_BASE="${TRAINER_BASE-python:3.11.13-slim-bookworm}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
RELEASE="${RELEASE:-llmtrain}"
RELEASE_NAMESPACE="${RELEASE_NAMESPACE:-llmtrain-system}"
PYTHON="${PYTHON:-${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}/venv/bin/python}"
KUBECONFIG_FILE="${KUBECONFIG_FILE:-$REPO/out/kind-$CLUSTER.kubeconfig}"
KIND="${KIND:-kind}"
HELM="${HELM:-helm}"
KUBECTL="${KUBECTL:-kubectl}"
DOCKER="${DOCKER:-docker}"

log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
need() { command -v "$1" >/dev/null || { echo "kind-e2e: '$1' not found on PATH" >&2; exit 1; }; }

for tool in "$DOCKER" "$KIND" "$HELM" "$KUBECTL"; do need "$tool"; done
[ -x "$PYTHON" ] || { echo "kind-e2e: no Python at $PYTHON (run 'make venv' or set PYTHON)" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failed (exit $rc); operator logs:"
    for ns in "$RELEASE_NAMESPACE" llmtrain-e2e-system; do
      KUBECONFIG="$KUBECONFIG_FILE" "$KUBECTL" logs --namespace "$ns" --prefix --tail=100 \
        -l app.kubernetes.io/name=llmtrain-operator 2>/dev/null || true
    done
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG_FILE)"
  else
    log "deleting cluster $CLUSTER"
    "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

mkdir -p "$(dirname "$KUBECONFIG_FILE")"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  "$KIND" create cluster --name "$CLUSTER" --wait 180s
fi
"$KIND" get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"

revision="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
log "building $OPERATOR_IMAGE"
"$DOCKER" build --target operator --build-arg "REVISION=$revision" -t "$OPERATOR_IMAGE" "$REPO"
log "building $TRAINER_IMAGE (base ${TRAINER_BASE:-the Dockerfile default})"
trainer_args=(--target trainer --build-arg "REVISION=$revision" -t "$TRAINER_IMAGE")
[ -n "$TRAINER_BASE" ] && trainer_args+=(--build-arg "TRAINER_BASE=$TRAINER_BASE")
[ -n "$TORCH_INDEX_URL" ] && trainer_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
"$DOCKER" build "${trainer_args[@]}" "$REPO"

log "loading images into $CLUSTER"
"$KIND" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

log "installing the chart into $RELEASE_NAMESPACE"
"$HELM" upgrade --install "$RELEASE" "$REPO/charts/llmtrain-operator" \
  --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set "image.repository=${OPERATOR_IMAGE%:*}" --set "image.tag=${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set "trainerImage.repository=${TRAINER_IMAGE%:*}" --set "trainerImage.tag=${TRAINER_IMAGE##*:}" \
  --wait --timeout 5m
"$HELM" test "$RELEASE" --namespace "$RELEASE_NAMESPACE" --timeout 3m --logs

log "running tests/e2e against kind"
cd "$REPO"
"$PYTHON" -m pytest tests/e2e -v "$@"
log "e2e passed"
