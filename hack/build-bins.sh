#!/usr/bin/env bash
# Builds the test bed's Kubernetes binaries from module sources into a version-keyed cache.
# Skips every binary that is already there, so a warm run takes a second.
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  <- k8s.io/kubernetes (wrapper module)
#   etcd                                                               <- go.etcd.io/etcd/server/v3 (wrapper module)
#   helm, kubeconform                                                  <- go install
#   kueue (manager) + its CRDs and webhook manifests                   <- sigs.k8s.io/kueue (wrapper module)
# Kubeflow's training-operator (bench/peers only) is built on demand by its sibling, hack/build-peers.sh (`make peers`).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.7.0}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE="${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
WORK="$CACHE/k8s-$K8S_VERSION/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$WORK"

log() { printf '[cluster-bins %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
have() { [ -x "$BIN/$1" ]; }

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"

k8s_missing=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do have "$b" || k8s_missing+=("$b"); done
if [ "${#k8s_missing[@]}" -gt 0 ]; then
  log "building ${k8s_missing[*]} from k8s.io/kubernetes $K8S_VERSION (cold build: ~20-30 min on 2 cores)"
  mod="$WORK/kubernetes"; mkdir -p "$mod"; cd "$mod"
  [ -f go.mod ] || go mod init llmtrain.dev/testbed/kubernetes >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > download.json
  upstream_gomod="$(python3 -c 'import json,sys; print(json.load(open("download.json"))["GoMod"])')"
  # Every staging module the upstream go.mod points at ./staging/... is served on its own as v0.Y.Z.
  grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$upstream_gomod" | awk '{print $1}' | sort -u > staging.txt
  [ -s staging.txt ] || { echo "no staging modules found in $upstream_gomod" >&2; exit 1; }
  while read -r m; do go mod edit -replace "$m=$m@$staging_version"; done < staging.txt
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  pkgs=(); for b in "${k8s_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go get "${pkgs[@]/%/@$K8S_VERSION}" >/dev/null
  go build -trimpath -ldflags "$ldflags" -o "$BIN/" "${pkgs[@]}"
fi

if ! have etcd; then
  log "building etcd $ETCD_VERSION"
  mod="$WORK/etcd"; mkdir -p "$mod"; cd "$mod"
  [ -f go.mod ] || go mod init llmtrain.dev/testbed/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi

if ! have helm; then
  log "building helm $HELM_VERSION"
  # Like helm's own Makefile: its version, and the Kubernetes version `helm template`/`lint` assume offline.
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  GOBIN="$BIN" go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

if ! have kubeconform; then
  log "building kubeconform $KUBECONFORM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
fi

# Kueue: the manager runs as a test-bed process (llmtrain_testbed.kueue); its CRDs and webhook configurations come
# from the same module version, copied next to the binary so the test bed needs no Go at run time.
KUEUE_MANIFESTS="$BIN/../kueue-$KUEUE_VERSION"
if ! have kueue || [ ! -f "$KUEUE_MANIFESTS/webhook.yaml" ]; then
  log "building kueue $KUEUE_VERSION (cold build: ~10 min on 2 cores)"
  mod="$WORK/kueue"; mkdir -p "$mod"; cd "$mod"
  [ -f go.mod ] || go mod init llmtrain.dev/testbed/kueue >/dev/null 2>&1
  go get "sigs.k8s.io/kueue@$KUEUE_VERSION" >/dev/null
  go build -trimpath -ldflags "-s -w" -o "$BIN/kueue" sigs.k8s.io/kueue/cmd/kueue
  src="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  mkdir -p "$KUEUE_MANIFESTS/crds"
  cp "$src"/config/components/crd/bases/*.yaml "$KUEUE_MANIFESTS/crds/"
  cp "$src/config/components/webhook/manifests.yaml" "$KUEUE_MANIFESTS/webhook.yaml"
  chmod -R u+w "$KUEUE_MANIFESTS"
fi

log "binaries ready in $BIN"
