#!/usr/bin/env bash
# Builds the release binary linked statically against glibc (`+crt-static`
# on the gnu target), the one scripts/package.sh ships and scripts/bench.sh
# measures, and prints its path on stdout (the build's output goes to
# stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
target=x86_64-unknown-linux-gnu

die() { echo "build-static: error: $*" >&2; exit 1; }

echo "build-static: building the static release binary ($target)" >&2
# RUSTFLAGS with --target applies to the binary only, not to build scripts
# and proc macros, which must stay dynamic. --no-default-features leaves
# the `generate` feature (clap_mangen, clap_complete) out of the shipped
# binary: package.sh makes the pages and completions with the debug build.
# -W linker-messages shows the linker's warnings, among them glibc's own
# for every function that needs shared libraries at run time even when
# linked statically ("Using 'getpwnam' in statically linked applications
# requires at runtime the shared libraries …"): NSS (users, groups, hosts),
# dlopen. Any such warning fails the build here.
# getrandom_backend="linux_getrandom": the getrandom crate finds glibc's
# getrandom() with dlsym, which finds nothing in a static binary, and then
# falls back to reading /dev/urandom, which a bare root (a chroot, a pod's
# mount namespace) lacks: `copy` and `--follow` failed there with "cannot
# get random bytes" (scripts/check-pod.sh). This calls getrandom() itself.
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
# Optimised for size (opt-level z; s gave 4.06 MiB, over the goal, once
# this stop's commands were in): the package is what minimal hosts
# carry, and virtomate waits on the agent, not on its own code.
# relocation-model=static: a plain static executable, not a static-pie;
# its 0.13 MiB of relocations (.rela.dyn) go, which z alone left at 4.08
# MiB once the control master ran whole runs. The price is a fixed load
# address for the binary's own code (the stack, heap and mappings are
# still randomised), as for busybox's and Go's static binaries.
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static -W linker-messages --cfg getrandom_backend="linux_getrandom"' \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  cargo build --release --locked --no-default-features --target "$target" 2>&1 | tee "$build_log" >&2
if grep -F 'statically linked applications requires at runtime' "$build_log" >&2; then
  die "the binary calls glibc functions that load shared libraries at run time (above)"
fi
echo "$repo/target/$target/release/virtomate"
