#!/usr/bin/env bash
# System packages weightvault's TPM support and its tests need (Debian/Ubuntu):
# swtpm (the software TPM the tests and demo start), tpm2-tools (interoperability
# tests), the TSS headers tpm2-pytss builds against, and Node.js for the
# differential test of Shamir sharing against an independent implementation, and what
# 'weightvault sandbox' isolates with (bubblewrap, nftables, iproute2), and PostgreSQL's server
# (the suite runs a second time with the broker on it; tests start their own cluster), and nginx
# (sealed weights served over HTTP in the remote-storage tests), Patroni and etcd (the database
# failover drill), and Chromium (the web console's browser tests drive Debian's build through
# Playwright, and 'weightvault report render --format pdf' prints with it). Installs what is missing
# when run as root with apt-get; otherwise says what to install and carries on,
# and the TPM parts skip locally (CI=true turns that into a failure).
set -euo pipefail
PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config bubblewrap nftables iproute2 postgresql nginx patroni etcd-server chromium fonts-dejavu-core)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(nodejs npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: TPM support needs: apt-get install ${missing[*]}" >&2
  [ "${CI:-}" = true ] && exit 1
fi
exit 0
