#!/usr/bin/env bash
# Builds the static release binary, the one scripts/package.sh ships and
# the benchmarks measure, and prints its path on stdout (the build's
# output goes to stderr).
#
# On musl (x86_64-unknown-linux-musl) when that target is installed
# (scripts/install-deps.sh adds it with rustup), else on glibc
# (`+crt-static` on the gnu target). musl is the faster start: glibc's
# static start-up probes the CPU's caches with cpuid, which traps to the
# hypervisor on a virtual machine: a third of a fresh virtomate's CPU
# behind a control master, and the host agent's master/session figure
# 1.47-1.66 against musl's 1.27-1.51 (docs/performance.md, stop 35). It
# is also 0.7 MiB smaller. VIRTOMATE_STATIC_TARGET names the target to use instead.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
musl=x86_64-unknown-linux-musl
glibc=x86_64-unknown-linux-gnu

die() { echo "build-static: error: $*" >&2; exit 1; }

installed() { [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]; }

if [ -n "${VIRTOMATE_STATIC_TARGET:-}" ]; then
  target="$VIRTOMATE_STATIC_TARGET"
  installed "$target" || die "the target $target is not installed: rustup target add $target"
elif installed "$musl"; then
  target="$musl"
else
  target="$glibc"
  echo "build-static: $musl is not installed (rustup target add $musl): building on glibc," \
    "which starts slower" >&2
fi

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
# getrandom_backend="linux_getrandom": the getrandom crate finds the C
# library's getrandom() with dlsym, which finds nothing in a static
# binary, and then falls back to reading /dev/urandom, which a bare root
# (a chroot, a pod's mount namespace) lacks: `copy` and `--follow` failed
# there with "cannot get random bytes" (scripts/check-pod.sh). This calls
# glibc's getrandom() itself. On musl, the LTO static link here left
# getrandom() a null address (a segmentation fault at the first random
# id, seen at stops 33 and 35), though libc.a has it: "linux_raw" makes
# the system call without the C library.
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
# Optimised for size (opt-level z; s gave 4.06 MiB, over the goal, once
# this stop's commands were in): the package is what minimal hosts
# carry, and virtomate waits on the agent, not on its own code.
# relocation-model=static: a plain static executable, not a static-pie;
# its 0.13 MiB of relocations (.rela.dyn) go, which z alone left at 4.08
# MiB once the control master ran whole runs (musl's default is a static
# PIE too). The price is a fixed load address for the binary's own code
# (the stack, heap and mappings are still randomised), as for busybox's
# and Go's static binaries.
backend=linux_getrandom
[ "$target" = "$glibc" ] || backend=linux_raw
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -W linker-messages --cfg getrandom_backend=\"$backend\"" \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  cargo build --release --locked --no-default-features --target "$target" 2>&1 | tee "$build_log" >&2
# musl has no NSS and loads nothing at run time.
if [ "$target" = "$glibc" ] && grep -F 'statically linked applications requires at runtime' "$build_log" >&2; then
  die "the binary calls glibc functions that load shared libraries at run time (above)"
fi
echo "$repo/target/$target/release/virtomate"
