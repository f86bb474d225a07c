#!/usr/bin/env bash
# Installs the Debian packages the test VM and the integration tests need.
# Idempotent: does nothing when every package is already installed.
set -euo pipefail

# time: GNU time measures peak RSS in the tests, the benchmark and the soak test.
# jq: the soak test (scripts/soak.sh) reads the JSON it checks.
# python3: a second process that holds a socket in the socket-holder tests.
# man-db, groff-base, bash, zsh, fish: the packaging tests render the man
# pages and load the shell completions (tests/packaging.rs).
# debootstrap, e2fsprogs: the Python test VM (scripts/build-python-vm.sh).
# rsync: rsync over `guest-run -i` against the host agent (tests/interactive.rs).
# python3-venv: the virtual environment with ansible-core
# (scripts/test-ansible.sh).
packages=(qemu-system-x86 qemu-guest-agent busybox-static cpio gzip kmod xz-utils zstd time jq python3 rsync
  man-db groff-base bash zsh fish debootstrap e2fsprogs python3-venv)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The shipped static binary is built on musl, which starts faster than
# glibc's static build (scripts/build-static.sh); without the target,
# rustup's servers out of reach, it is built on glibc instead.
musl=x86_64-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  timeout 300 rustup target add "$musl" ||
    echo "install-deps: could not add the Rust target $musl; the static binary will be built on glibc" >&2
fi
