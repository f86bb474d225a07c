#!/usr/bin/env bash
# Installs ansible-core, pinned, from PyPI into a virtual environment for the
# Ansible tests and benchmark, and prints the environment's directory.
#
# Usage: scripts/ansible-venv.sh [DIR]   (default: target/ansible-venv)
#
# Idempotent: does nothing when DIR already has the pinned version.
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
venv="${1:-$repo_root/target/ansible-venv}"

# The pin. ansible-core 2.19 runs on Python >= 3.11 on the controller
# (Debian 12's is 3.11) and drives guests with Python 3.8 to 3.13.
ANSIBLE_CORE_VERSION=2.19.14

"$script_dir/install-deps.sh" </dev/null >&2

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [ -x "$venv/bin/ansible-playbook" ] \
  && [ "$(cat "$venv/.ansible-core-version" 2>/dev/null)" = "$ANSIBLE_CORE_VERSION" ]; then
  echo "$venv"
  exit 0
fi

rm -rf "$venv"
# Debian's own Python, not whatever else is first on PATH.
/usr/bin/python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" >&2
echo "$ANSIBLE_CORE_VERSION" >"$venv/.ansible-core-version"
echo "$venv"
