#!/usr/bin/env bash
# Installs what the test bed and the tests need from Debian and the Go module proxy, once; a warm run is instant.
#   iproute2, util-linux  network and mount namespaces for pods (process kubelet)
#   prometheus            the real Prometheus the e2e suite scrapes the job with
#   the linters: shellcheck for the hack scripts, actionlint (go install) for .github/workflows
set -euo pipefail
CACHE="${LLMTRAIN_CACHE:-$HOME/.cache/llmtrain}"
TOOLS="$CACHE/tools/bin"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[system-deps] apt-get install ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "[system-deps] need root for apt-get (run: sudo $0)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package starts a system service; the tests run their own instance.
  systemctl disable --now prometheus >/dev/null 2>&1 || true
  pkill -x prometheus 2>/dev/null || true
fi

if [ ! -x "$TOOLS/actionlint" ]; then
  echo "[system-deps] go install actionlint $ACTIONLINT_VERSION"
  mkdir -p "$TOOLS"
  GOTOOLCHAIN=local GOBIN="$TOOLS" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
