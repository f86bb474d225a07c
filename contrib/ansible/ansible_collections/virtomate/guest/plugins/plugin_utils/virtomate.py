# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""Controller-side helpers of the virtomate connection plugin.

No Ansible import here, so that the unit tests can drive them with any
Python:

- ``Virtomate``: how to start the ``virtomate`` binary, on this host or on
  a hypervisor host over SSH, and what its JSON answers and errors mean;
- ``GuestRunRunner``: one ``virtomate guest-run`` process per command;
  with ``persist`` every virtomate process goes through virtomate's
  control master (``--persist``), which keeps the agent's connection for
  the whole play, shared by the tasks and forks;
- ``SessionRunner``: one ``virtomate session DOMAIN`` process speaking JSON
  lines (``{"id", "run", "stdin", "encode"}`` in, ``{"id", "result"}`` or
  ``{"id", "error"}`` out), for as long as the connection object lives;
- ``worth_compressing``: whether a file pays for ``copy --compress``;
- ``put_file_chunked``/``fetch_file_chunked``: files in and out over
  whichever runner, for a virtomate without ``copy``.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import tempfile
import threading
import zlib

# virtomate's error types (README, "Errors and exit statuses") that mean the
# guest could not be reached or was lost: Ansible's UNREACHABLE. The others
# (AgentCommandError, InputTooLarge, IoError, EncodingError, ...) are task
# failures.
UNREACHABLE_TYPES = frozenset((
    'NotFoundError',
    'IllegalStateError',
    'AgentUnavailable',
    'AgentTimeout',
    'AgentDisconnected',
    'AmbiguousDomainError',
    'ProtocolError',
    'libvirtError',
    'Interrupted',
))

# The agent caps each output stream at 16 MiB, and one request at 64 MiB
# (a little under 48 MiB of stdin once in Base64).
MAX_STDIN = 48 * 1024 * 1024 - 64 * 1024
DEFAULT_CHUNK = 4 * 1024 * 1024
MAX_FETCH_CHUNK = 12 * 1024 * 1024
# Bytes per data line of a copy through a session.
COPY_LINE = 1024 * 1024


class VirtomateError(Exception):
    """virtomate failed: ``unreachable`` tells a lost guest from a failed task."""

    def __init__(self, message, error_type=None, unreachable=True):
        super().__init__(message)
        self.error_type = error_type
        self.unreachable = unreachable


def error_from_json(error, context):
    """The VirtomateError for one of virtomate's ``{"message", "type"}``."""
    etype = error.get('type') or 'unknown'
    message = error.get('message') or json.dumps(error)
    return VirtomateError('%s: %s: %s' % (context, etype, message), etype, etype in UNREACHABLE_TYPES)


class RunResult:
    """A program's end in the guest, with its output as bytes."""

    def __init__(self, rc, stdout, stderr, stdout_truncated=False, stderr_truncated=False):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_truncated = stdout_truncated
        self.stderr_truncated = stderr_truncated

    @classmethod
    def from_json(cls, result):
        """From a RunResult as ``guest-run --encode`` prints it."""
        if not isinstance(result, dict) or ('exit_code' not in result and 'signal' not in result):
            raise VirtomateError('virtomate printed no run result: %r' % (result,), 'ProtocolError')
        if result.get('exit_code') is not None:
            rc = int(result['exit_code'])
        elif result.get('signal') is not None:
            # As a shell reports a program killed by a signal.
            rc = 128 + int(result['signal'])
        else:
            rc = -1

        def data(key):
            value = result.get(key)
            return base64.b64decode(value) if value else b''

        return cls(rc, data('stdout'), data('stderr'),
                   bool(result.get('stdout_truncated')), bool(result.get('stderr_truncated')))


class Virtomate:
    """The ``virtomate`` binary, here or on ``ssh_host``."""

    def __init__(self, path='virtomate', domain=None, ssh_host=None, ssh_executable='ssh', ssh_args=None,
                 timeout=None, reply_timeout=None, persist=None):
        self.path = path
        self.domain = domain
        self.ssh_host = ssh_host
        self.ssh_executable = ssh_executable
        self.ssh_args = list(ssh_args or [])
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        # Seconds the control master stays after its last request; None or
        # 0: no master, each process connects to the agent itself.
        self.persist = persist
        self._commands = None

    def global_args(self):
        args = []
        if self.timeout:
            args += ['--timeout', str(self.timeout)]
        if self.reply_timeout:
            args += ['--reply-timeout', str(self.reply_timeout)]
        if self.persist and self.persist > 0:
            args += ['--persist', '%g' % self.persist]
        return args

    def argv(self, args):
        """The local command line that runs ``virtomate ARGS``."""
        command = [self.path] + self.global_args() + list(args)
        if not self.ssh_host:
            return command
        # ssh hands the remote shell one string: quote every word.
        return [self.ssh_executable] + self.ssh_args + ['--', self.ssh_host, ' '.join(shlex.quote(a) for a in command)]

    def where(self):
        return 'virtomate on %s' % self.ssh_host if self.ssh_host else 'virtomate'

    def run(self, args, stdin=None, stdout=subprocess.PIPE):
        """Runs virtomate to its end: (exit status, stdout, stderr)."""
        argv = self.argv(args)
        try:
            proc = subprocess.run(argv, input=stdin if stdin is not None else None,
                                  stdin=None if stdin is not None else subprocess.DEVNULL,
                                  stdout=stdout, stderr=subprocess.PIPE, check=False)
        except OSError as e:
            raise VirtomateError('cannot run %s: %s' % (argv[0], e), 'IoError')
        return proc.returncode, proc.stdout, proc.stderr

    def check_process_failure(self, rc, stdout, stderr, context):
        """Raises what a failed virtomate (or ssh) process means."""
        text = (stdout or b'').decode('utf-8', 'replace').strip()
        err = (stderr or b'').decode('utf-8', 'replace').strip()
        if rc == 1 and text:
            try:
                error = json.loads(text.splitlines()[-1])
            except ValueError:
                error = None
            if isinstance(error, dict) and 'type' in error:
                raise error_from_json(error, context)
        if rc == 2 and b'--persist' in (stderr or b''):
            raise VirtomateError('%s: %s has no control master (--persist): set ansible_virtomate_persist_seconds=0'
                                 ' or update virtomate' % (context, self.where()), 'UsageError', unreachable=False)
        if self.ssh_host and rc == 255:
            raise VirtomateError('%s: ssh to %s failed: %s' % (context, self.ssh_host, err or 'exit status 255'), 'SshError')
        if rc in (126, 127):
            raise VirtomateError('%s: %s cannot be run (exit status %d): %s' % (context, self.where(), rc, err), 'IoError')
        raise VirtomateError('%s: %s exited with status %d: %s' % (context, self.where(), rc, err or text), 'IoError',
                             unreachable=rc != 2)

    def copy(self, src, dest, stdin_path=None, stdout_path=None, compress=False):
        """``virtomate copy [--compress] SRC DEST``; over SSH a local side is
        ``-``, its data on stdin (STDIN_PATH) or stdout (STDOUT_PATH)."""
        stdin = stdout = None
        argv = self.argv(['copy'] + (['--compress'] if compress else []) + [src, dest])
        try:
            stdin = open(stdin_path, 'rb') if stdin_path is not None else subprocess.DEVNULL
            stdout = open(stdout_path, 'wb') if stdout_path is not None else subprocess.PIPE
            proc = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=False)
        except OSError as e:
            raise VirtomateError('cannot run %s: %s' % (argv[0], e), 'IoError')
        finally:
            for f in (stdin, stdout):
                if hasattr(f, 'close'):
                    f.close()
        if proc.returncode != 0:
            self.check_process_failure(proc.returncode, proc.stdout or b'', proc.stderr, 'copy %s %s' % (src, dest))

    def stop_master(self):
        """``virtomate control exit DOMAIN``: the domain's control master, if
        one runs, ends; the next command starts a new one."""
        rc, out, err = self.run(['control', 'exit', self.domain])
        if rc != 0:
            try:
                self.check_process_failure(rc, out, err, 'control exit %s' % self.domain)
            except VirtomateError as e:
                if e.error_type != 'NotFoundError':
                    raise

    def commands(self):
        """The subcommands this virtomate has, from ``virtomate --help``."""
        if self._commands is None:
            rc, out, err = self.run(['--help'])
            if rc != 0:
                self.check_process_failure(rc, out, err, 'virtomate --help')
            self._commands = parse_commands(out.decode('utf-8', 'replace'))
        return self._commands

    def has_command(self, name):
        return name in self.commands()


def parse_commands(help_text):
    """The command names of clap's help: the lines of its ``Commands:``
    section, or of the sections virtomate groups them in (``Files:``, ...),
    up to ``Options:``."""
    names = set()
    in_commands = False
    for line in help_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(':'):
            in_commands = line.strip() not in ('Options:', 'Arguments:')
            continue
        if in_commands and line.startswith('  ') and not line.startswith('   ') and line.split():
            names.add(line.split()[0])
    return names


class GuestRunRunner:
    """One ``virtomate guest-run --encode`` process per program."""

    def __init__(self, virtomate):
        self.virtomate = virtomate

    def run(self, argv, stdin=None):
        if stdin is not None and len(stdin) > MAX_STDIN:
            raise VirtomateError('input of %d bytes is over what one guest-run can pass (%d)' % (len(stdin), MAX_STDIN),
                                 'InputTooLarge', unreachable=False)
        args = ['guest-run', '--encode']
        if stdin is not None:
            args.append('--stdin')
        args += [self.virtomate.domain, '--'] + list(argv)
        rc, out, err = self.virtomate.run(args, stdin=stdin)
        context = 'guest-run %s' % self.virtomate.domain
        if rc != 0:
            self.virtomate.check_process_failure(rc, out, err, context)
        try:
            result = json.loads(out)
        except ValueError:
            raise VirtomateError('%s: %s printed no JSON: %r' % (context, self.virtomate.where(), out[:200]), 'ProtocolError')
        return RunResult.from_json(result)

    def close(self):
        pass


class _JsonLinesRunner:
    """Requests and replies as ``virtomate session``'s JSON lines.

    Requests go out one line each with a fresh id; replies may come in any
    order (the session runs programs in parallel), so replies to other ids
    wait in ``_replies`` for whoever asked. Used by one thread at a time.
    Subclasses give ``_write(bytes)``, ``_readline()`` and ``_lost(why)``.
    """

    def __init__(self, virtomate):
        self.virtomate = virtomate
        self._next_id = 1
        self._replies = {}
        self._lock = threading.Lock()

    def request(self, body):
        """Sends one request and returns its reply's ``result``."""
        with self._lock:
            rid = self._new_id()
            self._send(dict(body, id=rid))
            return self._result(rid)

    def put_file(self, in_path, out_path):
        """Copies the local IN_PATH to OUT_PATH in the guest through the
        session (``copy_to``, the data in lines after it), with its mode."""
        mode = '%o' % (os.stat(in_path).st_mode & 0o7777)
        with self._lock:
            rid = self._new_id()
            self._send({'id': rid, 'copy_to': out_path, 'mode': mode})
            try:
                with open(in_path, 'rb') as source:
                    for piece in iter(lambda: source.read(COPY_LINE), b''):
                        self._send({'id': rid, 'data': base64.b64encode(piece).decode('ascii')})
            except OSError as e:
                self._send({'id': rid, 'abort': str(e)})
                try:
                    self._result(rid)
                except VirtomateError:
                    pass
                raise VirtomateError('cannot read %s: %s' % (in_path, e), 'IoError', unreachable=False)
            self._send({'id': rid, 'end': True})
            return self._result(rid)

    def fetch_file(self, in_path, out_path):
        """Copies IN_PATH in the guest to the local OUT_PATH through the
        session (``copy_from``, the data in lines before its reply)."""
        with self._lock:
            rid = self._new_id()
            self._send({'id': rid, 'copy_from': in_path})
            try:
                with open(out_path, 'wb') as out:
                    return self._result(rid, on_data=out.write)
            except BaseException:
                try:
                    os.unlink(out_path)
                except OSError:
                    pass
                raise

    def _new_id(self):
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send(self, body):
        line = json.dumps(body, separators=(',', ':')).encode() + b'\n'
        try:
            self._write(line)
        except (BrokenPipeError, OSError, ValueError):
            raise self._lost('cannot send the request')

    def _result(self, rid, on_data=None):
        """Reads until the reply to RID comes and returns its ``result``;
        data lines of RID before it go to ON_DATA, as bytes."""
        while rid not in self._replies:
            try:
                raw = self._readline()
            except (OSError, ValueError):
                raw = b''
            if not raw:
                raise self._lost('no reply to request %d' % rid)
            try:
                reply = json.loads(raw)
            except ValueError:
                raise VirtomateError('session %s: not JSON: %r' % (self.virtomate.domain, raw[:200]), 'ProtocolError')
            if isinstance(reply, dict) and 'id' not in reply and 'type' in reply:
                # virtomate's own error before any request (an unknown
                # domain, a usage error): the session ends with it.
                raise error_from_json(reply, 'session %s' % self.virtomate.domain)
            if not isinstance(reply, dict) or 'id' not in reply:
                raise VirtomateError('session %s: a reply without id: %r' % (self.virtomate.domain, raw[:200]),
                                     'ProtocolError')
            if 'data' in reply:
                if reply['id'] == rid and on_data is not None:
                    on_data(base64.b64decode(reply['data']))
                continue
            self._replies[reply['id']] = reply
        reply = self._replies.pop(rid)
        if 'error' in reply:
            raise error_from_json(reply['error'] or {}, 'session %s' % self.virtomate.domain)
        if 'result' not in reply:
            raise VirtomateError('session %s: reply %r has neither result nor error' % (self.virtomate.domain, reply),
                                 'ProtocolError')
        return reply['result']

    def ping(self):
        return self.request({'ping': {}})

    def run(self, argv, stdin=None):
        body = {'run': list(argv), 'encode': True}
        if stdin is not None:
            if len(stdin) > MAX_STDIN:
                raise VirtomateError('input of %d bytes is over what one run can pass (%d)' % (len(stdin), MAX_STDIN),
                                     'InputTooLarge', unreachable=False)
            body['stdin'] = base64.b64encode(stdin).decode('ascii')
        return RunResult.from_json(self.request(body))


class SessionRunner(_JsonLinesRunner):
    """One ``virtomate session DOMAIN`` process of this connection's own."""

    def __init__(self, virtomate, popen=subprocess.Popen):
        super().__init__(virtomate)
        self._stderr = tempfile.TemporaryFile()
        argv = virtomate.argv(['session', virtomate.domain])
        try:
            self._proc = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)
        except OSError as e:
            raise VirtomateError('cannot run %s: %s' % (argv[0], e), 'IoError')

    def _write(self, line):
        self._proc.stdin.write(line)
        self._proc.stdin.flush()

    def _readline(self):
        return self._proc.stdout.readline()

    def _lost(self, why):
        self._stderr.seek(0)
        err = self._stderr.read().decode('utf-8', 'replace').strip()
        rc = self._proc.poll()
        detail = '; '.join(x for x in (why, 'exit status %s' % rc if rc is not None else '', err) if x)
        return VirtomateError('session %s: %s ended: %s' % (self.virtomate.domain, self.virtomate.where(), detail),
                              'AgentDisconnected')

    def close(self, timeout=10):
        """EOF on stdin: the session finishes what is in flight and exits 0."""
        proc = self._proc
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._stderr.close()


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
