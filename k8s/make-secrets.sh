#!/usr/bin/env bash
# Writes the files kustomization.yaml's secretGenerator reads (k8s/secrets/, git-ignored): a random bearer token
# per tenant named on the command line (default: one tenant, `default`), a random Redis password, and the app's
# Redis URL carrying it. Existing files are kept: run it once, then `kubectl apply -k k8s/`.
#   bash k8s/make-secrets.sh                 # one tenant: default
#   bash k8s/make-secrets.sh alice bob       # two tenants, each with its own token and image_ids
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
if [ ! -f secrets/tokens.json ]; then
  tenants=("${@:-default}")
  python3 - "${tenants[@]}" > secrets/tokens.json <<'PY'
import json, secrets, sys
print(json.dumps({name: secrets.token_urlsafe(32) for name in sys.argv[1:]}, indent=2))
PY
  echo "wrote secrets/tokens.json (tenants: ${tenants[*]}): hand each tenant its token" >&2
fi
if [ ! -f secrets/redis-password ]; then
  random | tr -d '\n' > secrets/redis-password
fi
if [ ! -f secrets/redis-url ]; then
  printf 'redis://:%s@sam-redis:6379/0' "$(cat secrets/redis-password)" > secrets/redis-url
fi
