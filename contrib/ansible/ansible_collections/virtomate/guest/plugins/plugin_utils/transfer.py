# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""Files between the controller and the guest, beside ``virtomate copy``:
``worth_compressing`` (whether a file pays for ``copy --compress``) and
``put_file_chunked``/``fetch_file_chunked`` (files in and out over any
runner, for a virtomate without ``copy``). No Ansible import here.
"""

from __future__ import annotations

import os
import zlib

from ansible_collections.virtomate.guest.plugins.plugin_utils.virtomate import (
    DEFAULT_CHUNK,
    MAX_FETCH_CHUNK,
    MAX_STDIN,
    VirtomateError,
)

# Files smaller than this go as they are: gzip in the guest costs a run
# (and, before it, a look for gzip) that only pays back on more data.
COMPRESS_MIN = 64 * 1024
# A sample of the file, packed at zlib's fastest level, must shrink to this
# share of its size for the whole file to go gzipped.
COMPRESS_SAMPLE = 64 * 1024
COMPRESS_RATIO = 0.75


def worth_compressing(path):
    """Whether PATH is big enough and packs well enough (text, logs, not
    data compressed already) to pay for ``copy --compress``."""
    try:
        if os.path.getsize(path) < COMPRESS_MIN:
            return False
        with open(path, 'rb') as f:
            sample = f.read(COMPRESS_SAMPLE)
    except OSError:
        return False
    return len(zlib.compress(sample, 1)) <= COMPRESS_RATIO * len(sample)


# --- Files over runs, for a virtomate without `copy` ------------------------

def put_file_chunked(runner, in_path, out_path, chunk_size=DEFAULT_CHUNK):
    """Writes IN_PATH to the guest's OUT_PATH, CHUNK_SIZE bytes per run."""
    chunk_size = max(1, min(int(chunk_size), MAX_STDIN))
    with open(in_path, 'rb') as f:
        first = True
        while True:
            chunk = f.read(chunk_size)
            if not chunk and not first:
                break
            # The path is an argument, never part of the script.
            script = 'cat > "$1"' if first else 'cat >> "$1"'
            res = runner.run(['/bin/sh', '-c', script, 'sh', out_path], stdin=chunk)
            if res.rc != 0:
                raise VirtomateError('cannot write %s in the guest (exit status %d): %s'
                                     % (out_path, res.rc, res.stderr.decode('utf-8', 'replace').strip()),
                                     'IoError', unreachable=False)
            first = False
            if len(chunk) < chunk_size:
                break


def fetch_file_chunked(runner, in_path, out_path, chunk_size=MAX_FETCH_CHUNK):
    """Reads the guest's IN_PATH into OUT_PATH.

    One ``cat`` does for a file under the agent's 16 MiB output cap; past the
    cap the rest comes in CHUNK_SIZE pieces (``tail -c +OFFSET | head -c``).
    """
    chunk_size = max(1, min(int(chunk_size), MAX_FETCH_CHUNK))

    def fail(res):
        raise VirtomateError('cannot read %s in the guest (exit status %d): %s'
                             % (in_path, res.rc, res.stderr.decode('utf-8', 'replace').strip()),
                             'IoError', unreachable=False)

    res = runner.run(['/bin/sh', '-c', 'exec cat -- "$1"', 'sh', in_path])
    if res.rc != 0:
        fail(res)
    with open(out_path, 'wb') as f:
        f.write(res.stdout)
        offset = len(res.stdout)
        truncated = res.stdout_truncated
        while truncated:
            res = runner.run(['/bin/sh', '-c', 'tail -c +"$2" -- "$1" | head -c "$3"', 'sh', in_path,
                              str(offset + 1), str(chunk_size)])
            if res.rc != 0:
                fail(res)
            f.write(res.stdout)
            offset += len(res.stdout)
            truncated = len(res.stdout) == chunk_size
