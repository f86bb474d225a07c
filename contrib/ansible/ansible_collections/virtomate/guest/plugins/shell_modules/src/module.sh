#!/bin/sh
# Ansible's stat, copy, file and slurp modules in POSIX sh with busybox's
# applets, for guests without Python (the connection's shell_modules
# option): what Ansible's copy and fetch actions ask of them, and the
# common options around that. Any other option fails the task, naming it.
#
# One script, installed as stat.sh, copy.sh, file.sh and slurp.sh. Ansible
# runs it as DIR/AnsiballZ_NAME.sh ARGS_FILE (an "old-style" module), with
# the arguments as it writes them on the controller: NAME=VALUE words, each
# VALUE quoted for sh by Python's shlex.quote. Values are strings: True,
# False, None as Python prints them, and an unquoted YAML mode such as
# 0644 arrives as 420 (quote modes).
#
# Under emulation each process costs milliseconds: the helpers set
# variables rather than print into $(...), which forks.

set -u

# --- the result --------------------------------------------------------

RESULT=''

json_str() { # TEXT: as a JSON string in JSON (other control characters become ?)
  case $1 in
    *[\"\\]* | *[[:cntrl:]]*)
      JSON=\"$(printf '%s' "$1" | tr '\001-\010\013-\037' '?' |
        sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/	/\\t/g' | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/\\n/g')\"
      ;;
    *) JSON=\"$1\" ;;
  esac
}
put() { RESULT="$RESULT${RESULT:+, }\"$1\": $2"; }   # KEY JSON
put_str() { json_str "$2"; put "$1" "$JSON"; }       # KEY TEXT
put_bool() { if [ "$2" = 1 ]; then put "$1" true; else put "$1" false; fi; }
finish() { printf '{%s}\n' "$RESULT"; exit 0; }
fail() {
  RESULT=''
  put failed true
  put_str msg "$1"
  printf '{%s}\n' "$RESULT"
  exit 1
}

# --- the arguments -----------------------------------------------------

MODULE=${0##*/}
MODULE=${MODULE#AnsiballZ_}
MODULE=${MODULE%.sh}
if [ $# -lt 1 ] || [ ! -r "$1" ]; then fail "$MODULE: no arguments file"; fi
# The file is Ansible's, written on the controller (see the top).
eval "set -- $(cat "$1")"
GIVEN=''
for word in "$@"; do
  name=${word%%=*}
  case $name in '' | *[!A-Za-z0-9_]*) fail "$MODULE: bad argument name: $name" ;; esac
  eval "arg_$name=\${word#*=}"
  GIVEN="$GIVEN $name"
done

opt() { # VAR NAME [NAME...]: VAR = the first option given, empty for None
  var=$1
  shift
  for a in "$@"; do
    eval "v=\${arg_$a-}"
    if [ -n "$v" ] && [ "$v" != None ]; then
      eval "$var=\$v"
      return
    fi
  done
  eval "$var="
}
bool_of() { # VALUE: BOOL = 1, 0, or empty for what is not a boolean
  case $1 in
    1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss] | [Oo][Nn] | [Yy] | [Tt]) BOOL=1 ;;
    0 | [Ff][Aa][Ll][Ss][Ee] | [Nn][Oo] | [Oo][Ff][Ff] | [Nn] | [Ff] | '' | None) BOOL=0 ;;
    *) BOOL='' ;;
  esac
}
is_on() { # NAME DEFAULT(0|1): whether the boolean option NAME is true
  opt value "$1"
  bool_of "${value:-$2}"
  [ -n "$BOOL" ] || fail "$MODULE: $1 is not a boolean: $value"
  [ "$BOOL" = 1 ]
}

# Fails on an option this implementation lacks; one given as false or None
# asks for nothing and passes.
accept() { # NAME...: the options this module takes
  is_on _ansible_ignore_unknown_opts 0 && return
  for name in $GIVEN; do
    case " $* " in *" $name "*) continue ;; esac
    case $name in _ansible_*) continue ;; esac
    opt value "$name"
    bool_of "$value"
    if [ "$BOOL" != 0 ]; then
      fail "$MODULE: option '$name' is not supported on a guest without Python (virtomate shell modules)"
    fi
  done
}

CHECK_MODE=0
is_on _ansible_check_mode 0 && CHECK_MODE=1
act() { [ "$CHECK_MODE" = 1 ] || "$@"; }
no_diff() {
  ! is_on _ansible_diff 0 ||
    fail "$MODULE: diff mode is not supported on a guest without Python (virtomate shell modules)"
}

# --- files -------------------------------------------------------------

checksum() { # ALGORITHM FILE: in SUM
  case $1 in md5 | sha1 | sha256 | sha512) ;; *) fail "$MODULE: checksum_algorithm $1 is not supported" ;; esac
  SUM=$("${1}sum" <"$2") || fail "$MODULE: cannot read $2"
  SUM=${SUM%% *}
}
octal4() { # MODE: OCTAL = MODE as Python's '%04o' writes it
  OCTAL=$1
  while [ ${#OCTAL} -lt 4 ]; do OCTAL=0$OCTAL; done
}

# The mode option, as chmod takes it: empty when not given.
opt MODE mode
case $MODE in preserve) fail "$MODULE: mode=preserve is not supported here" ;; esac
mode_wanted() { # PATH: WANT = the mode PATH gets from MODE, as stat's %a
  case $MODE in
    *[!0-7]*) ;;
    ?*)
      # Octal: no need to ask chmod.
      [ ${#MODE} -le 5 ] || fail "$MODULE: bad mode: $MODE"
      WANT=$(printf '%o' $((0$MODE & 07777)))
      return
      ;;
  esac
  # Symbolic: applied to a scratch file with PATH's mode, which also checks it.
  scratch=$(mktemp) || fail "$MODULE: cannot make a temporary file"
  if ! { chmod "$(stat -c %a "$1")" "$scratch" && chmod "$MODE" "$scratch" 2>/dev/null; }; then
    rm -f "$scratch"
    fail "$MODULE: bad mode: $MODE"
  fi
  WANT=$(stat -c %a "$scratch")
  rm -f "$scratch"
}

CHANGED=0
# Applies mode, owner and group to PATH, in check mode only says whether.
set_attributes() { # PATH
  if [ -n "$MODE" ]; then
    mode_wanted "$1"
    if [ "$WANT" != "$(stat -c %a "$1")" ]; then
      act chmod "$MODE" "$1" || fail "$MODULE: chmod $MODE $1 failed"
      CHANGED=1
    fi
  fi
  set_id owner %u %U "$1"
  set_id group %g %G "$1"
}
set_id() { # owner|group ID_FORMAT NAME_FORMAT PATH
  opt want "$1"
  [ -n "$want" ] || return 0
  case $want in *[!0-9]*) have=$(stat -c "$3" "$4") ;; *) have=$(stat -c "$2" "$4") ;; esac
  [ "$want" = "$have" ] && return 0
  if [ "$1" = owner ]; then act chown "$want" "$4"; else act chgrp "$want" "$4"; fi ||
    fail "$MODULE: cannot set $1 $want on $4"
  CHANGED=1
}
put_attributes() { # PATH
  [ -e "$1" ] || return 0
  # shellcheck disable=SC2046  # four numbers
  set -- $(stat -c '%a %u %g %s' "$1")
  octal4 "$1"
  put mode "\"$OCTAL\""
  put uid "$2"
  put gid "$3"
  put size "$4"
}

# --- the modules -------------------------------------------------------

module_stat() {
  accept path dest name follow get_checksum checksum_algorithm checksum get_size get_md5
  opt path path dest name
  [ -n "$path" ] || fail "stat: missing required arguments: path"
  follow=0
  is_on follow 0 && follow=1
  lnk=0
  if [ "$follow" = 0 ] && [ -L "$path" ]; then lnk=1; fi
  if [ "$lnk" = 0 ] && [ ! -e "$path" ]; then
    put changed false
    put stat '{"exists": false}'
    finish
  fi
  L=''
  [ "$follow" = 1 ] && L=-L
  # shellcheck disable=SC2086  # $L: one option or none
  fields=$(stat $L -c '%a %s %u %g %i %h %X %Y %Z' "$path") || fail "stat: cannot stat $path"
  # shellcheck disable=SC2086  # nine numbers
  set -- $fields
  STAT=''
  add() { STAT="$STAT${STAT:+, }\"$1\": $2"; }
  add exists true
  json_str "$path"
  add path "$JSON"
  octal4 "$1"
  add mode "\"$OCTAL\""
  if [ "$lnk" = 1 ]; then
    for k in isdir isreg ischr isblk isfifo issock; do add "$k" false; done
  else
    for t in d:isdir f:isreg c:ischr b:isblk p:isfifo S:issock; do
      if test "-${t%%:*}" "$path"; then add "${t#*:}" true; else add "${t#*:}" false; fi
    done
  fi
  if [ "$lnk" = 1 ]; then add islnk true; else add islnk false; fi
  add size "$2"
  add uid "$3"
  add gid "$4"
  add inode "$5"
  add nlink "$6"
  add atime "$7"
  add mtime "$8"
  add ctime "$9"
  if [ "$lnk" = 1 ]; then
    json_str "$(readlink -f "$path")"
    add lnk_source "$JSON"
    json_str "$(readlink "$path")"
    add lnk_target "$JSON"
  fi
  if [ "$lnk" = 0 ] && [ -f "$path" ] && [ -r "$path" ] && is_on get_checksum 1; then
    opt alg checksum_algorithm checksum
    checksum "${alg:-sha1}" "$path"
    add checksum "\"$SUM\""
  fi
  put changed false
  put stat "{$STAT}"
  finish
}

module_slurp() {
  accept src path
  opt src src path
  [ -n "$src" ] || fail "slurp: missing required arguments: src"
  [ -e "$src" ] || fail "file not found: $src"
  [ ! -d "$src" ] || fail "source is a directory and must be a file: $src"
  [ -r "$src" ] || fail "file is not readable: $src"
  # Streamed: the file is never held in the shell's memory.
  exec 3<"$src" || fail "file is not readable: $src"
  json_str "$src"
  printf '{"changed": false, "encoding": "base64", "source": %s, "content": "' "$JSON"
  base64 <&3 | tr -d '\n'
  printf '"}\n'
  exit 0
}

module_copy() {
  accept src dest _original_basename checksum follow force mode owner group local_follow directory_mode
  no_diff
  opt src src
  opt dest dest
  if [ -z "$src" ] || [ -z "$dest" ]; then fail "copy: src and dest are required"; fi
  [ -f "$src" ] || fail "Source $src not found"
  # A bad mode fails before anything is written.
  if [ -n "$MODE" ]; then mode_wanted "$src"; fi
  checksum sha1 "$src"
  sum=$SUM
  opt expected checksum
  [ -z "$expected" ] || [ "$expected" = "$sum" ] ||
    fail "Copied file does not match the expected checksum. Transfer failed."
  opt base _original_basename
  case $dest in
    */)
      # As Ansible's module: a dest ending in / (the copy action makes it
      # so for a directory's files) gets its missing directories.
      dest="$dest${base:-${src##*/}}"
      make_parents "${dest%/*}"
      ;;
  esac
  [ -d "$dest" ] && dest="${dest%/}/${base:-${src##*/}}"
  if [ -L "$dest" ] && is_on follow 0; then dest=$(readlink -f "$dest"); fi
  case $dest in */*) ;; *) dest=./$dest ;; esac
  dir=${dest%/*}
  dir=${dir:-/}
  [ -d "$dir" ] || fail "Destination directory $dir does not exist"
  if [ -e "$dest" ] && ! is_on force 1; then
    put changed false
    put_str dest "$dest"
    put_str src "$src"
    finish
  fi
  if [ -d "$dest" ]; then fail "copy: $dest is a directory"; fi
  SUM=''
  if [ -f "$dest" ] && [ ! -L "$dest" ]; then checksum sha1 "$dest"; fi
  if [ "$SUM" != "$sum" ]; then
    CHANGED=1
    if [ "$CHECK_MODE" = 0 ]; then replace "$src" "$dest"; fi
  fi
  set_attributes "$dest"
  put_bool changed "$CHANGED"
  put_str dest "$dest"
  put_str src "$src"
  put_str checksum "$sum"
  put_str state file
  put_attributes "$dest"
  finish
}

# Makes DIR and its missing parents, each new one with directory_mode (if
# given), owner and group, as Ansible's copy does; in check mode it answers
# that DIR would be made and ends, as that module does.
make_parents() { # DIR
  [ -e "$1" ] && return 0
  if [ "$CHECK_MODE" = 1 ]; then
    put changed true
    put_str msg "dest directory $1 would be created"
    put_str src "$src"
    finish
  fi
  missing=''
  d=$1
  while [ -n "$d" ] && [ ! -e "$d" ]; do
    missing="$d
$missing"
    case $d in */*) d=${d%/*} ;; *) d='' ;; esac
  done
  mkdir -p "$1" || fail "copy: cannot make directory $1"
  CHANGED=1
  file_mode=$MODE
  opt MODE directory_mode
  old_ifs=$IFS
  IFS='
'
  for d in $missing; do set_attributes "$d"; done
  IFS=$old_ifs
  MODE=$file_mode
}

# Writes SRC's bytes to DEST by a rename in DEST's directory, keeping the
# mode and owner of a DEST that exists (a new one gets the umask's mode).
replace() { # SRC DEST
  tmp=$(mktemp "${2%/*}/.virtomate-copy.XXXXXX") || fail "copy: cannot write in ${2%/*}/"
  if ! cat "$1" >"$tmp"; then
    rm -f "$tmp"
    fail "copy: cannot write $tmp"
  fi
  if [ -f "$2" ] && [ ! -L "$2" ]; then
    chmod "$(stat -c %a "$2")" "$tmp" && chown "$(stat -c %u:%g "$2")" "$tmp"
  else
    chmod "$(printf '%o' $((0666 & ~0$(umask))))" "$tmp"
  fi || {
    rm -f "$tmp"
    fail "copy: cannot set the mode of $tmp"
  }
  mv -f "$tmp" "$2" || {
    rm -f "$tmp"
    fail "copy: cannot rename $tmp to $2"
  }
}

module_file() {
  accept path dest name state mode owner group recurse follow force src _original_basename _diff_peek
  no_diff
  opt peek _diff_peek
  [ -z "$peek" ] || fail "file: diff mode is not supported on a guest without Python"
  ! is_on recurse 0 || fail "file: recurse is not supported on a guest without Python"
  opt path path dest name
  [ -n "$path" ] || fail "file: missing required arguments: path"
  opt state state
  if [ -L "$path" ] && ! is_on follow 1 && [ "$state" != link ] && [ "$state" != absent ]; then
    fail "file: $path is a symlink; follow=false is not supported on a guest without Python"
  fi
  if [ -z "$state" ]; then
    if [ -d "$path" ]; then state=directory; else state='file'; fi
  fi
  case $state in
    file)
      opt base _original_basename
      if [ -d "$path" ] && [ -n "$base" ]; then path="${path%/}/$base"; fi
      [ -e "$path" ] || fail "file ($path) is absent, cannot continue"
      [ ! -d "$path" ] || fail "file ($path) is a directory, cannot continue"
      ;;
    directory)
      if [ ! -d "$path" ]; then
        [ ! -e "$path" ] || fail "$path exists but is not a directory"
        act mkdir -p "$path" || fail "file: cannot make directory $path"
        CHANGED=1
      fi
      ;;
    absent)
      if [ -e "$path" ] || [ -L "$path" ]; then
        act rm -rf "$path" || fail "file: cannot remove $path"
        CHANGED=1
      fi
      put_bool changed "$CHANGED"
      put_str path "$path"
      put_str state absent
      finish
      ;;
    touch)
      # As Ansible's module: made if absent, its times set to now always.
      if [ ! -e "$path" ] && [ "$CHECK_MODE" = 1 ]; then
        put changed true
        put_str dest "$path"
        finish
      fi
      act touch "$path" || fail "Error, could not touch target."
      CHANGED=1
      [ -e "$path" ] && set_attributes "$path"
      put changed true
      put_str dest "$path"
      put_path_state "$path"
      put_attributes "$path"
      finish
      ;;
    link) file_link ;;
    hard) file_hard ;;
    *) fail "file: state=$state is not supported on a guest without Python" ;;
  esac
  # In check mode a directory to make does not exist yet.
  [ -e "$path" ] && set_attributes "$path"
  put_bool changed "$CHANGED"
  put_str path "$path"
  put_str state "$state"
  put_attributes "$path"
  finish
}

# The state Ansible's file module names what is at PATH by.
path_state() { # PATH: in STATE
  if [ -L "$1" ]; then
    STATE='link'
  elif [ -d "$1" ]; then
    STATE=directory
  elif [ -e "$1" ]; then
    if [ "$(stat -c %h "$1")" -gt 1 ]; then STATE='hard'; else STATE='file'; fi
  else
    STATE=absent
  fi
}
put_path_state() { # PATH
  path_state "$1"
  put_str state "$STATE"
}

# Replaces what is at PATH with a new link by a rename (a symbolic one
# with -s), or makes it. An empty directory goes first; so does a link to
# a directory, which mv would move the new link into.
new_link() { # -s|-h SRC PATH
  [ "$CHECK_MODE" = 1 ] && return 0
  if [ -d "$3" ]; then
    if [ -L "$3" ]; then rm -f "$3"; else rmdir "$3"; fi ||
      fail "the directory $3 is not empty, refusing to convert it"
  fi
  if [ -e "$3" ] || [ -L "$3" ]; then
    tmp="${3%/*}/.virtomate-link.$$"
    case $3 in */*) ;; *) tmp=.virtomate-link.$$ ;; esac
    rm -f "$tmp"
    if [ "$1" = -s ]; then ln -s "$2" "$tmp"; else ln "$2" "$tmp"; fi || fail "Error while linking: $2 to $3"
    mv -f "$tmp" "$3" || {
      rm -f "$tmp"
      fail "Error while replacing: $3"
    }
  else
    if [ "$1" = -s ]; then ln -s "$2" "$3"; else ln "$2" "$3"; fi || fail "Error while linking: $2 to $3"
  fi
}

file_link() {
  opt src src
  path_state "$path"
  prev=$STATE
  if [ -z "$src" ] && [ "$prev" = link ] && is_on follow 1; then src=$(readlink "$path"); fi
  force=0
  is_on force 0 && force=1
  if [ -n "$src" ] && [ "$force" = 0 ]; then
    case $src in /*) abs=$src ;; *) abs="${path%/*}/$src" ;; esac
    case $path in */*) ;; *) abs=$src ;; esac
    [ -e "$abs" ] ||
      fail "src file does not exist, use 'force=yes' if you really want to create the link: $abs"
  fi
  case $prev in
    directory)
      [ "$force" = 1 ] || fail "refusing to convert from directory to symlink for $path"
      [ -z "$(ls -A "$path")" ] || fail "the directory $path is not empty, refusing to convert it"
      ;;
    file | hard) [ "$force" = 1 ] || fail "refusing to convert from $prev to symlink for $path" ;;
  esac
  case $prev in
    link) [ -z "$src" ] || [ "$(readlink "$path")" = "$src" ] || CHANGED=1 ;;
    *)
      [ -n "$src" ] || fail "src is required for creating new symlinks"
      CHANGED=1
      ;;
  esac
  [ "$CHANGED" = 0 ] || new_link -s "$src" "$path"
  # Mode, owner and group go to what the link points at, as with follow.
  if [ -e "$path" ]; then set_attributes "$(readlink -f "$path")"; fi
  put_bool changed "$CHANGED"
  put_str dest "$path"
  put_str src "$src"
  put_path_state "$path"
  finish
}

file_hard() {
  opt src src
  path_state "$path"
  prev=$STATE
  [ "$prev" = hard ] || [ -n "$src" ] || fail "src is required for creating new hardlinks"
  [ -z "$src" ] || [ -e "$src" ] || fail "src does not exist"
  force=0
  is_on force 0 && force=1
  case $prev in
    absent | link) CHANGED=1 ;;
    hard)
      if [ -n "$src" ] && [ "$(stat -c %d:%i "$path")" != "$(stat -c %d:%i "$src")" ]; then
        [ "$force" = 1 ] || fail "Cannot link, different hard link exists at destination"
        CHANGED=1
      fi
      ;;
    file)
      [ "$force" = 1 ] || fail "Cannot link, file exists at destination"
      CHANGED=1
      ;;
    directory) fail "file: state=hard over the directory $path is not supported on a guest without Python" ;;
  esac
  [ "$CHANGED" = 0 ] || new_link -h "$src" "$path"
  [ -e "$path" ] && set_attributes "$path"
  put_bool changed "$CHANGED"
  put_str dest "$path"
  put_str src "$src"
  put_path_state "$path"
  put_attributes "$path"
  finish
}

case $MODULE in
  stat | slurp | copy | file) "module_$MODULE" ;;
  *) fail "no shell module named $MODULE" ;;
esac
