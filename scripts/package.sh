#!/usr/bin/env bash
# Builds virtomate for minimal hosts and checks it (issue 10): a release
# binary linked fully statically against glibc (`+crt-static` on the gnu
# target; there is no musl target here), stripped, with its man pages and
# shell completions beside it.
#
# Checks, each fatal:
#   - the binary is static: no ELF interpreter, and ldd says so;
#   - it pulls in no glibc function that loads shared libraries at run
#     time (NSS: getpwnam, getaddrinfo, …; iconv), by the symbols of the
#     unstripped binary;
#   - it is smaller than 4 MiB (the size is printed);
#   - it runs from an empty root: a chroot holding only the binary, /proc
#     and the test VM's agent socket, where `guest-ping`, `guest-run` and
#     `domain-list` must work — nothing to load there, no /etc, no /dev.
#
# Output, in target/package/:
#   virtomate                      the static binary
#   man/virtomate.1, man/virtomate-COMMAND.1, …
#   completions/virtomate.bash, completions/_virtomate, completions/virtomate.fish
#   virtomate-VERSION-x86_64-linux.tar.gz   all of the above
#
# Needs root (chroot, mount) and the test VM built by build-test-vm.sh
# (VM_ARTIFACTS as for run-test-vm.sh). Takes a few minutes from cold:
# the release build has LTO and one codegen unit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

die() { echo "package: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: the check runs the binary in a chroot"

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
# than the built-in ones, and virtomate converts none.)
nss="$(nm "$built" | grep -E ' _*(getpw(nam|uid|ent)|getgr(nam|gid|ent|ouplist)|initgroups|getsp(nam|ent)|getaddrinfo|gethostby|getservby|getprotoby|getnetby|iconv_open|nss_)' || true)"
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

echo "package: running it from an empty root against the test VM"
work="$(mktemp -d /tmp/virtomate-package.XXXXXX)"
vm="$work/vm"
root="$work/root"
cleanup() {
  "$repo/scripts/stop-test-vm.sh" "$vm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
VM_NAME="virtomate-package-$$" "$repo/scripts/run-test-vm.sh" "$vm"

mkdir -p "$root/proc"
cp "$out/virtomate" "$root/virtomate"
: >"$root/qga.sock"
# In a mount namespace of its own: the mounts go away with it, whatever
# happens. The socket is bind-mounted onto an empty file of the same name.
unshare --mount --propagation private bash -euo pipefail -c '
  root="$1" socket="$2" vm_name="$3"
  mount -t proc proc "$root/proc"
  mount --bind "$socket" "$root/qga.sock"
  echo "package: the empty root holds: $(cd "$root" && find . -mindepth 1 -maxdepth 1 | sort | tr "\n" " ")"
  echo "+ chroot ROOT /virtomate guest-ping --wait 60 /qga.sock"
  chroot "$root" /virtomate guest-ping --wait 60 /qga.sock
  echo "exit status 0"
  echo "+ chroot ROOT /virtomate guest-run /qga.sock -- /bin/echo -n static"
  output="$(chroot "$root" /virtomate guest-run /qga.sock -- /bin/echo -n static)"
  echo "$output"
  [ "$output" = "{\"exit_code\":0,\"signal\":null,\"stderr\":null,\"stderr_truncated\":false,\"stdout\":\"static\",\"stdout_truncated\":false}" ]
  echo "+ chroot ROOT /virtomate domain-list"
  list="$(chroot "$root" /virtomate domain-list)"
  echo "$list"
  case "$list" in
    *"\"name\":\"$vm_name\""*) ;;
    *) echo "package: error: domain-list does not show $vm_name" >&2; exit 1 ;;
  esac
' bash "$root" "$vm/qga.sock" "virtomate-package-$$"

version="$("$out/virtomate" --version)"   # "virtomate 0.1.0"
tarball="virtomate-${version#virtomate }-x86_64-linux.tar.gz"
tar -C "$out" --owner=0 --group=0 --sort=name --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -czf "$work/$tarball" virtomate man completions
mv "$work/$tarball" "$out/$tarball"

echo "package: done in $((SECONDS - started)) s: $out"
(cd "$out" && find . -type f | sort | sed 's/^\.\//  /')
