#!/usr/bin/env bash
# Deploy one tenant on one vertical: `make deploy VERTICAL=healthcare TENANT=acme`.
#
#   deploy/k8s/deploy.sh [--render] VERTICAL TENANT
#
# 1. writes the tenant overlay deploy/k8s/tenants/TENANT (an overlay on
#    verticals/VERTICAL, namespace vm-TENANT) unless it exists;
# 2. regenerates the NATS permission file and the edge services' tenant list
#    (nats_auth.py) and validates every manifest offline (validate.py);
# 3. with --render, prints the tenant's manifests and stops (no cluster needed);
# 4. otherwise creates the Secrets that are missing (never overwrites one), applies the
#    base (NATS rolls to load the new user), waits for the streams job, and applies the
#    tenant. Set DATABASE_URL to use an external PostgreSQL for this tenant and
#    PROVIDER_EGRESS=1 to let the pod reach OpenAI / the SMS provider over HTTPS.
#
# TLS: NATS (clients and routes), Redis and PostgreSQL only speak TLS. The first deploy needs
# the operator's CA: TLS_CA_CERT=ca.crt TLS_CA_KEY=ca.key (PEM files). deploy.sh issues the
# servers' certificates from it (deploy/k8s/certs.py) into the Secrets nats-tls, redis-tls
# and postgres-tls, and puts the CA certificate alone into the Secret mesh-ca of every
# namespace (the clients verify the servers with it). Existing Secrets are kept; to rotate,
# delete them and deploy again with the CA. A test CA: `uv run python deploy/k8s/certs.py ca DIR`.
#
# Redis: one ACL user per tenant, fenced to its own keys, and one per edge service
# (deploy/k8s/redis_acl.py). Passwords: the Secret voicemesh/redis-users (one key per user);
# the ACL file Redis loads: voicemesh/redis-acl (regenerated and loaded with ACL LOAD);
# the tenant's own user and password: vm-<tenant>/redis (username, password).
set -euo pipefail

K8S="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$K8S/../.." && pwd)"
PYTHON="${PYTHON:-uv run --frozen --project $REPO python}"
if [[ -z "${KUBECTL:-}" ]]; then
  if command -v kubectl >/dev/null; then KUBECTL=kubectl; else KUBECTL="$REPO/.venv/bin/kubectl"; fi
fi

render_only=0
if [[ "${1:-}" == "--render" ]]; then render_only=1; shift; fi
if [[ $# -ne 2 ]]; then
  echo "usage: $0 [--render] VERTICAL TENANT   (e.g. healthcare acme)" >&2
  exit 2
fi
vertical="$1"; tenant="$2"

if [[ ! -f "$K8S/verticals/$vertical/kustomization.yaml" ]]; then
  echo "unknown vertical '$vertical'; one of: $(ls "$K8S/verticals" | tr '\n' ' ')" >&2
  exit 2
fi
# Tenant ids become NATS subject tokens and the namespace vm-<tenant> (DNS-1123 label).
if [[ ! "$tenant" =~ ^[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?$ ]]; then
  echo "invalid tenant '$tenant': lowercase letters, digits and '-', at most 60 characters" >&2
  exit 2
fi
case "$tenant" in admin|gateway|push) echo "tenant id '$tenant' is reserved" >&2; exit 2;; esac

overlay="$K8S/tenants/$tenant"
if [[ -f "$overlay/tenant.env" ]]; then
  current="$(sed -n 's/^VOICEMESH_TENANTS=[^:]*://p' "$overlay/tenant.env")"
  if [[ "$current" != "$vertical" ]]; then
    echo "tenant '$tenant' already exists on vertical '$current'" >&2
    exit 2
  fi
else
  mkdir -p "$overlay"
  components=""
  if [[ "${PROVIDER_EGRESS:-0}" == "1" ]]; then
    components=$'components:\n  - ../../components/provider-egress\n'
  fi
  cat > "$overlay/kustomization.yaml" <<YAML
# Tenant $tenant on the $vertical vertical, in namespace vm-$tenant.
# Made by deploy/k8s/deploy.sh $vertical $tenant.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: vm-$tenant
resources:
  - ../../verticals/$vertical
labels:
  - pairs:
      voicemesh.io/tenant: $tenant
    includeTemplates: true
configMapGenerator:
  - name: tenant
    behavior: replace
    envs:
      - tenant.env
$components
YAML
  cat > "$overlay/tenant.env" <<ENV
VOICEMESH_TENANT=$tenant
VOICEMESH_TENANTS=$tenant:$vertical
VOICEMESH_NATS_USER=$tenant
# A real tenant starts with its own records, not the demo data.
VOICEMESH_SEED_DEMO_DATA=false
ENV
  echo "wrote ${overlay#"$REPO/"}"
fi

$PYTHON "$K8S/nats_auth.py"
$PYTHON "$K8S/validate.py" "$K8S/base" "$K8S/verticals/$vertical" "$overlay"

if [[ $render_only == 1 ]]; then
  "$KUBECTL" kustomize "$overlay"
  exit 0
fi

# --- cluster side --------------------------------------------------------------------------
k() { "$KUBECTL" "$@"; }
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
env_name() { echo "VM_NATS_PASSWORD_$(echo "$1" | tr 'a-z-' 'A-Z_')"; }
has_secret() { k -n "$1" get secret "$2" >/dev/null 2>&1; }
secret_key() { k -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 -d; }
# Secret values reach kubectl through files (process substitution), never its argv.
put_secret() {  # namespace name key=value...
  local ns="$1" name="$2"; shift 2
  k -n "$ns" create secret generic "$name" --from-env-file=<(printf '%s\n' "$@") \
    --dry-run=client -o yaml | k apply -f - >/dev/null
}
patch_secret() {  # namespace name key value
  k -n "$1" patch secret "$2" --type merge \
    --patch-file=<(printf '{"stringData":{"%s":"%s"}}' "$3" "$4") >/dev/null
}
add_secret_key() {  # namespace name key value: only if the key is missing
  if [[ -z "$(secret_key "$1" "$2" "$3")" ]]; then patch_secret "$@"; fi
}

k create namespace voicemesh --dry-run=client -o yaml | k apply -f - >/dev/null
k create namespace "vm-$tenant" --dry-run=client -o yaml | k apply -f - >/dev/null

has_secret voicemesh nats-users || put_secret voicemesh nats-users \
  "$(env_name admin)=$(random)" "$(env_name gateway)=$(random)" "$(env_name push)=$(random)"
add_secret_key voicemesh nats-users "$(env_name "$tenant")" "$(random)"
# nats-server refuses to start on a password variable its pods do not have: every user of
# auth.conf gets one (a tenant not deployed yet gets a password no pod knows).
for variable in $(k kustomize "$K8S/base" | grep -oE '\$VM_NATS_PASSWORD_[A-Z0-9_]+' | sort -u); do
  add_secret_key voicemesh nats-users "${variable#\$}" "$(random)"
done
nats_password="$(secret_key voicemesh nats-users "$(env_name "$tenant")")"
# TLS: the servers' certificates from the operator's CA, and the CA for the clients.
if ! has_secret voicemesh nats-tls || ! has_secret voicemesh redis-tls \
   || ! has_secret voicemesh postgres-tls || ! has_secret voicemesh mesh-ca; then
  if [[ -z "${TLS_CA_CERT:-}" || -z "${TLS_CA_KEY:-}" ]]; then
    echo "the TLS Secrets are missing: set TLS_CA_CERT and TLS_CA_KEY to your CA's PEM files" >&2
    exit 2
  fi
  issued="$(mktemp -d)"; trap 'rm -rf "$issued"' EXIT
  $PYTHON "$K8S/certs.py" issue "$TLS_CA_CERT" "$TLS_CA_KEY" "$issued"
  for server in nats redis postgres; do
    has_secret voicemesh "$server-tls" || k -n voicemesh create secret generic "$server-tls" \
      --from-file="$issued/$server/tls.crt" --from-file="$issued/$server/tls.key" \
      --from-file="$issued/$server/ca.crt" --dry-run=client -o yaml | k apply -f - >/dev/null
  done
  has_secret voicemesh mesh-ca || k -n voicemesh create secret generic mesh-ca \
    --from-file=ca.crt="$TLS_CA_CERT" --dry-run=client -o yaml | k apply -f - >/dev/null
  rm -rf "$issued"
fi
# The tenant's pod verifies the servers with the same CA.
k -n "vm-$tenant" create secret generic mesh-ca \
  --from-file=ca.crt=<(secret_key voicemesh mesh-ca ca.crt) --dry-run=client -o yaml \
  | k apply -f - >/dev/null

# Redis ACL users: admin (the Redis pod itself), gateway, push, and this tenant.
has_secret voicemesh redis-users || put_secret voicemesh redis-users \
  "admin=$(random)" "gateway=$(random)" "push=$(random)"
add_secret_key voicemesh redis-users "$tenant" "$(random)"
k -n voicemesh get secret redis-users -o json | $PYTHON "$K8S/redis_acl.py" \
  | k -n voicemesh create secret generic redis-acl --from-file=users.acl=/dev/stdin \
      --dry-run=client -o yaml | k apply -f - >/dev/null
has_secret voicemesh postgres-admin || put_secret voicemesh postgres-admin "password=$(random)"
has_secret voicemesh call-token || put_secret voicemesh call-token "secret=$(random)$(random)"
has_secret voicemesh turn || put_secret voicemesh turn "static-auth-secret=$(random)"
has_secret voicemesh api-keys || put_secret voicemesh api-keys "keys="
# /metrics answers only this bearer token in production (VOICEMESH_PUBLIC_METRICS=false).
has_secret voicemesh metrics || put_secret voicemesh metrics "token=$(random)$(random)"
has_secret voicemesh apns || echo "warning: Secret voicemesh/apns (<tenant>.json APNs credentials) is missing: push cannot ring phones (docs/deploy.md)" >&2

api_keys="$(secret_key voicemesh api-keys keys)"
if [[ ",$api_keys," != *",$tenant:"* ]]; then
  tenant_key="$(random)"
  api_keys="${api_keys:+$api_keys,}$tenant:$tenant_key"
  patch_secret voicemesh api-keys keys "$api_keys"
  echo "API key of tenant $tenant (shown once; also in Secret vm-$tenant/api-keys): $tenant_key"
fi

k apply -k "$K8S/base"
k -n voicemesh rollout status statefulset/postgres --timeout=300s
pg() { k -n voicemesh exec -i postgres-0 -c postgres -- psql -v ON_ERROR_STOP=1 -U postgres -qtA "$@"; }
ensure_database() {  # name password -> creates role and database if missing
  if [[ -z "$(pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$1'")" ]]; then
    pg <<<"CREATE ROLE \"$1\" LOGIN PASSWORD '$2'; CREATE DATABASE \"$1\" OWNER \"$1\";"
  fi
}
if ! has_secret voicemesh push-database; then
  push_pw="$(random)"; ensure_database vm_push "$push_pw"
  put_secret voicemesh push-database \
    "url=postgresql+asyncpg://vm_push:$push_pw@postgres:5432/vm_push?ssl=verify-full"
fi

if ! has_secret "vm-$tenant" database; then
  if [[ -n "${DATABASE_URL:-}" ]]; then
    url="$DATABASE_URL"
  else
    db="vm_$(echo "$tenant" | tr '-' '_')"; pw="$(random)"
    ensure_database "$db" "$pw"
    url="postgresql+asyncpg://$db:$pw@postgres.voicemesh.svc.cluster.local:5432/$db?ssl=verify-full"
  fi
  put_secret "vm-$tenant" database "crm=$url" "calendar=$url" "sms=$url" "audit=$url" "transcript=$url"
fi
# Audit (docs/deploy.md, "The audit trail"): the audit service logs in as an INSERT-only
# role; the tables belong to postgres. With an external DATABASE_URL, do this by hand.
if [[ -z "${DATABASE_URL:-}" ]]; then
  db="vm_$(echo "$tenant" | tr '-' '_')"; writer="${db}_audit"; audit_pw=""
  if [[ "$(secret_key "vm-$tenant" database audit)" != *"://$writer:"* ]]; then
    audit_pw="$(random)"
    if [[ -z "$(pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$writer'")" ]]; then
      pg <<<"CREATE ROLE \"$writer\" LOGIN PASSWORD '$audit_pw';"
    else
      pg <<<"ALTER ROLE \"$writer\" PASSWORD '$audit_pw';"
    fi
  fi
  # Idempotent: creates the tables if missing, takes them from the tenant's role, grants.
  $PYTHON -m voicemesh.audit schema --database "$db" --writer "$writer" | pg -d "$db"
  if [[ -n "$audit_pw" ]]; then
    patch_secret "vm-$tenant" database audit \
      "postgresql+asyncpg://$writer:$audit_pw@postgres.voicemesh.svc.cluster.local:5432/$db?ssl=verify-full"
  fi
fi
# The key that signs the audit chain's heads; its public half is printed for safekeeping.
if ! has_secret "vm-$tenant" audit-signing-key; then
  keys="$(mktemp -d)"
  $PYTHON -m voicemesh.audit keygen "$keys"
  k -n "vm-$tenant" create secret generic audit-signing-key \
    --from-file=private.pem="$keys/private.pem" --from-file=public.pem="$keys/public.pem" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  echo "audit public key of tenant $tenant (keep a copy outside the cluster to verify with):"
  cat "$keys/public.pem"
  rm -rf "$keys"
fi
put_secret "vm-$tenant" nats-credentials "password=$nats_password"
put_secret "vm-$tenant" redis "username=$tenant" "password=$(secret_key voicemesh redis-users "$tenant")"
put_secret "vm-$tenant" api-keys "keys=$(tr ',' '\n' <<<"$api_keys" | grep "^$tenant:")"
put_secret "vm-$tenant" metrics "token=$(secret_key voicemesh metrics token)"

# The new NATS user and tenant list roll NATS, gateway and push (their ConfigMaps changed);
# API keys live in a Secret, so the edge services are restarted to read them.
k -n voicemesh rollout status statefulset/nats --timeout=600s
# Redis loads the new ACL file once the kubelet has updated the mounted Secret.
k -n voicemesh rollout status deployment/redis --timeout=300s
k -n voicemesh exec deploy/redis -c redis -- sh -c \
  "until grep -q '^user $tenant ' /etc/redis/acl/users.acl; do sleep 2; done; \
   redis-cli --tls --cacert /etc/redis/tls/ca.crt --user admin ACL LOAD" >/dev/null
k -n voicemesh rollout restart deployment/gateway deployment/push
k -n voicemesh wait --for=condition=complete job/streams-apply --timeout=300s
k apply -k "$overlay"
k -n "vm-$tenant" rollout status deployment/agent-pod --timeout=300s
echo "tenant $tenant ($vertical) is up in namespace vm-$tenant"
