#!/usr/bin/env bash
# Builds virtomate for minimal hosts and checks it (issue 10): a release
# binary linked fully statically (on musl, or on glibc where the musl
# target is missing: scripts/build-static.sh), stripped, with its man
# pages and shell completions beside it.
#
# Checks, each fatal:
#   - the binary is static: no ELF interpreter, and ldd says so;
#   - it pulls in no C library function that loads shared libraries at run
#     time (NSS: getpwnam, getaddrinfo, …; iconv), by the symbols of the
#     unstripped binary;
#   - it is smaller than 4 MiB (the size is printed).
# That it runs from an empty root against a VM is the test suite's check
# (scripts/check-package.sh, which scripts/test.sh runs after this).
#
# Output, in target/package/:
#   virtomate                      the static binary
#   man/virtomate.1, man/virtomate-COMMAND.1, …
#   completions/virtomate.bash, completions/_virtomate, completions/virtomate.fish
#   virtomate-VERSION-x86_64-linux.tar.gz   all of the above
#
# Needs no VM and no root. Takes a few minutes from cold: the release
# build has LTO and one codegen unit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

die() { echo "package: error: $*" >&2; exit 1; }

out="$repo/target/package"
max_size=$((4 * 1024 * 1024))

# The man pages' date: the commit's, so that the same commit gives the
# same pages (src/generate.rs reads it).
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)"
  export SOURCE_DATE_EPOCH
fi

started=$SECONDS
built="$(scripts/build-static.sh)"

rm -rf "$out"
mkdir -p "$out"

# Static: no PT_INTERP (no dynamic loader named), and ldd agrees
# ("statically linked" for a static PIE, "not a dynamic executable" else).
if readelf -lW "$built" | grep -q 'INTERP'; then
  die "$built asks for a dynamic loader: $(readelf -lW "$built" | grep -A1 INTERP | tail -1)"
fi
ldd_says="$(ldd "$built" 2>&1 || true)"
case "$ldd_says" in
  *"statically linked"* | *"not a dynamic executable"*) ;;
  *) die "ldd says $built is dynamic: $ldd_says" ;;
esac
echo "package: ldd: $(echo "$ldd_says" | tr -s ' \t' ' ' | sed 's/^ //')"

# The same from the other end: no NSS or iconv entry point among the
# symbols of the binary before stripping. (dlopen's code is there all the
# same, never called: glibc's gconv refers to it, for character sets other
# than the built-in ones, and virtomate converts none.) glibc's fork()
# names __nss_database_fork_prepare_parent and _subprocess, weakly: they
# keep NSS's state across a fork when NSS was linked in, and stay
# undefined (U) here, where it is not; a process virtomate starts (the
# control master, guest-freeze's watchdog and COMMAND) brings fork in.
nss="$(nm "$built" | grep -E ' _*(getpw(nam|uid|ent)|getgr(nam|gid|ent|ouplist)|initgroups|getsp(nam|ent)|getaddrinfo|gethostby|getservby|getprotoby|getnetby|iconv_open|nss_)' \
  | grep -Ev ' U __nss_database_fork_(prepare_parent|subprocess)$' || true)"
[ -z "$nss" ] || die "the binary uses functions that load shared libraries at run time:
$nss"

strip --strip-all -o "$out/virtomate" "$built"
size="$(stat -c %s "$out/virtomate")"
size_mib="$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')"
echo "package: size: $size bytes ($size_mib MiB) stripped, goal under 4 MiB"
[ "$size" -lt "$max_size" ] || die "the binary is $size_mib MiB, over 4 MiB"

echo "package: man pages and completions"
cargo build --locked
"$repo/target/debug/virtomate" --generate "$out"

version="$("$out/virtomate" --version)"   # "virtomate 0.1.0"
tarball="virtomate-${version#virtomate }-x86_64-linux.tar.gz"
work="$(mktemp -d /tmp/virtomate-package.XXXXXX)"
trap 'rm -rf "$work"' EXIT
tar -C "$out" --owner=0 --group=0 --sort=name --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -czf "$work/$tarball" virtomate man completions
mv "$work/$tarball" "$out/$tarball"

echo "package: done in $((SECONDS - started)) s: $out"
(cd "$out" && find . -type f | sort | sed 's/^\.\//  /')
