#!/usr/bin/env bash
# Builds the peer operators bench/peers compares against into the test bed's version-keyed cache, on demand only
# (`make peers`): not part of `make cluster-bins`, so `make test`'s cold build does not pay for it.
#   training-operator (manager) + its CRDs and webhook manifests  <- github.com/kubeflow/training-operator (wrapper module)
# Skips what is already there, so a warm run takes a second.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-v1.8.1}"
CACHE="${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
WORK="$CACHE/k8s-$K8S_VERSION/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$WORK"

log() { printf '[peer-bins %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The manager runs as a test-bed process (llmtrain_testbed.peers); its CRDs and webhook configuration come from the
# same module version, copied next to the binary so the test bed needs no Go at run time.
TO_MANIFESTS="$BIN/../training-operator-$TRAINING_OPERATOR_VERSION"
if [ ! -x "$BIN/training-operator" ] || [ ! -f "$TO_MANIFESTS/webhook.yaml" ]; then
  log "building training-operator $TRAINING_OPERATOR_VERSION (cold build: ~2-5 min on 2 cores)"
  mod="$WORK/training-operator"; mkdir -p "$mod"; cd "$mod"
  [ -f go.mod ] || go mod init llmtrain.dev/testbed/training-operator >/dev/null 2>&1
  go get "github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION" >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/training-operator" \
    github.com/kubeflow/training-operator/cmd/training-operator.v1
  src="$(go list -m -f '{{.Dir}}' github.com/kubeflow/training-operator)"
  mkdir -p "$TO_MANIFESTS/crds"
  cp "$src"/manifests/base/crds/kubeflow.org_*.yaml "$TO_MANIFESTS/crds/"
  cp "$src/manifests/base/webhook/manifests.yaml" "$TO_MANIFESTS/webhook.yaml"
  chmod -R u+w "$TO_MANIFESTS"
fi

log "peer binaries ready in $BIN"
