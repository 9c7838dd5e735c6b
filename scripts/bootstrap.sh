#!/usr/bin/env bash
# Prepare a fresh Debian machine with Python 3.11 to run and test voicemesh.
#
# Installs uv when it is missing, the system packages the browser tests need (only when
# run as root and only what is missing), and the locked Python environment.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
    echo "bootstrap: installing uv"
    python3 -m pip install --quiet --disable-pip-version-check uv \
        || python3 -m pip install --quiet --user --disable-pip-version-check uv
    export PATH="$HOME/.local/bin:$PATH"
fi

# Headless Chromium drives the /demo browser tests (Playwright uses it; no browser download);
# PostgreSQL binaries give the tests a throwaway server (initdb in a temporary directory).
# The cluster rehearsal (make rehearse) runs the manifests' own third-party images from
# Debian: redis-server (7, with TLS and ACL files), coturn, and iproute2 and iptables for the
# pods' network namespaces and NetworkPolicies.
APT_PACKAGES=(chromium postgresql redis-server coturn iproute2 iptables)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing system packages: ${missing[*]} (run as root or install them)" >&2
        exit 1
    fi
fi

# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE (set on many CI machines)
# every service process would otherwise compile its dependencies again at each start,
# doubling the time the local stack takes to come up.
uv sync --locked --all-packages --compile-bytecode --quiet
uv run --frozen python -m compileall -q libs services tools >/dev/null
echo "bootstrap: environment ready ($(uv run --frozen python --version))"
