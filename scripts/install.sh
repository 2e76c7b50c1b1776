#!/usr/bin/env bash
# Installs everything p3s needs on this machine: Debian packages, then a project-local virtual
# environment with the p3s package (editable). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the system and its tests use. Later capabilities (XRootD, Slurm, Chromium)
# add theirs here.
APT_PACKAGES=(python3-venv procps xrootd-server xrootd-client slurm-wlm munge chromium chromium-driver)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the dependencies changed.
stamp=.venv/.p3s-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import p3s.flows" 2>/dev/null; then
  echo "==> pip install -e .[dev] (a few minutes on a fresh machine)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
echo "==> installed: $(.venv/bin/p3s --help >/dev/null && echo 'p3s command ready')"
# A single-node Slurm (munged, slurmctld, slurmd) for the pilots and their tests.
./scripts/slurm.sh
