#!/usr/bin/env bash
# Validates deploy/kubernetes/ against the Kubernetes API schemas, strictly (an unknown field
# is an error): kubernetes-validate from PyPI (pinned; it ships the schemas, nothing else is
# downloaded), in a virtualenv in target/. Behind `make check-deploy`.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/deploy-venv
version=1.37.0
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$version" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi
# The oldest Kubernetes the manifests promise (1.27) and the newest the validator knows.
for k in 1.27 1.37; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" \
    deploy/kubernetes/*.yaml deploy/kubernetes/secret.yaml.example
  echo "deploy/kubernetes: valid against the Kubernetes $k schemas"
done
