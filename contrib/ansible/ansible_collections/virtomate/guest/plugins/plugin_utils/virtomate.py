# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""Controller-side helpers of the virtomate connection plugin: how to run
the ``virtomate`` binary, and one ``guest-run`` per command.

No Ansible import here, so that the unit tests can drive them with any
Python:

- ``Virtomate``: how to start the ``virtomate`` binary, on this host or on
  a hypervisor host over SSH, and what its JSON answers and errors mean;
- ``GuestRunRunner``: one ``virtomate guest-run`` process per command;
  with ``persist`` every virtomate process goes through virtomate's
  control master (``--persist``), which keeps the agent's connection for
  the whole play, shared by the tasks and forks.

What only some tasks need is in modules of its own, imported when used,
since Ansible compiles every collection module it imports afresh in each
task's worker process: ``session`` (``SessionRunner``, for
``use_session=always``) and ``transfer`` (files).
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess

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
