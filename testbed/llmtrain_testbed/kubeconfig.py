"""Kubeconfig files for the admin user and each control-plane component (client cert auth)."""

from __future__ import annotations

import json
from pathlib import Path

from .pki import Pki

SERVER = "https://127.0.0.1:6443"


def write(path: Path, pki: Pki, cert_name: str, user: str, server: str = SERVER) -> Path:
    """Write a single-context kubeconfig; JSON is valid YAML, so no YAML library is needed."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "llmtrain", "cluster": {"server": server, "certificate-authority": str(pki.ca_crt)}}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.crt(cert_name)),
                    "client-key": str(pki.key(cert_name)),
                },
            }
        ],
        "contexts": [{"name": "llmtrain", "context": {"cluster": "llmtrain", "user": user}}],
        "current-context": "llmtrain",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
