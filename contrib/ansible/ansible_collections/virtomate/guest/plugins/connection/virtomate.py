# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
    name: virtomate
    short_description: Run tasks in QEMU guests through the guest agent, with virtomate
    description:
        - Runs tasks in a QEMU virtual machine through its QEMU Guest Agent, by running the C(virtomate) binary,
          on the controller or on the hypervisor host over SSH. The guest needs no network and no SSH server,
          only a running C(qemu-ga).
        - Works on bare QEMU and on libvirt domains alike, without libvirt's library or Python bindings.
        - Every command runs as C(/bin/sh -c COMMAND) started by the agent, which runs as root, so the
          connection's user is C(root) (see O(remote_user)).
    author: virtomate developers
    version_added: "0.1.0"
    extends_documentation_fragment:
        - connection_pipelining
    notes:
        - The guest agent runs programs as root; C(ansible_user) is not used to log in anywhere. C(become) with
          C(become_user) other than root switches to that user in the guest with the become method's own command
          (C(sudo -u USER), C(su USER)); run from root, neither asks for a password, so C(become_password) is
          not needed and not sent.
        - The agent gives programs its own environment, often without C(HOME) (systemd sets none for it);
          the plugin sets C(HOME=/root) when it is missing, for modules and paths with C(~). Ansible's temporary
          directory is in C(/tmp) (see O(remote_tmp)).
        - Without C(virtomate copy), files move through runs of C(sh -c 'cat > PATH') with the data on
          standard input, O(chunk_size) bytes per run, and come back through C(cat) (C(tail)/C(head) past the
          agent's 16 MiB output cap).
        - Windows guests are not supported (commands go through C(/bin/sh)).
        - On a guest without Python (see O(shell_modules)), C(raw) and C(script) work as anywhere, and the
          C(copy) and C(fetch) actions run the collection's POSIX sh versions of the C(stat), C(copy), C(file)
          and C(slurp) modules (busybox's applets are enough). They take the options these actions use (copy
          of a file or C(content) with C(dest), C(mode) (quoted, since an unquoted C(0644) reaches them as 420),
          C(owner), C(group), C(force), C(follow), C(checksum), C(directory_mode), into missing directories
          as Ansible's module does; fetch with all its options; C(file) with the states C(file),
          C(directory), C(absent), C(touch), C(link) and C(hard)). Other options and C(--diff) fail the
          task, naming what is missing; check mode works. Tasks of these modules get them too, by the short
          name (C(file)) or the full one (C(ansible.builtin.file)). Other modules need Python, as ever.
    options:
      domain:
        description:
          - The virtual machine, as C(virtomate) takes it, on the host where it runs (the controller, or
            O(ssh_host)) - a libvirt domain name or UUID, the C(-name) of a bare QEMU process, or the path
            of the agent's UNIX socket.
        type: string
        default: inventory_hostname
        vars:
          - name: inventory_hostname
          - name: ansible_host
          - name: ansible_virtomate_domain
      virtomate_path:
        description:
          - The C(virtomate) binary, looked up on E(PATH) when it has no C(/). With O(ssh_host), its path on
            that host.
        type: string
        default: virtomate
        vars:
          - name: ansible_virtomate_path
        env:
          - name: ANSIBLE_VIRTOMATE_PATH
        ini:
          - section: virtomate_connection
            key: virtomate_path
      ssh_host:
        description:
          - Run C(virtomate) on this hypervisor host, as C(SSH_EXECUTABLE SSH_ARGS -- SSH_HOST virtomate ...),
            instead of on the controller. Needs a login that asks for no password (keys, an agent).
        type: string
        vars:
          - name: ansible_virtomate_ssh_host
        env:
          - name: ANSIBLE_VIRTOMATE_SSH_HOST
      ssh_executable:
        description: The SSH client used with O(ssh_host).
        type: string
        default: ssh
        vars:
          - name: ansible_virtomate_ssh_executable
        env:
          - name: ANSIBLE_VIRTOMATE_SSH_EXECUTABLE
        ini:
          - section: virtomate_connection
            key: ssh_executable
      ssh_args:
        description:
          - Arguments for the SSH client, split as a shell would (for example
            C(-o ControlMaster=auto -o ControlPersist=60s -o ControlPath=~/.ssh/cm-%C) to reuse one SSH
            connection for the many short C(virtomate) runs of a play).
        type: string
        default: ''
        vars:
          - name: ansible_virtomate_ssh_args
        env:
          - name: ANSIBLE_VIRTOMATE_SSH_ARGS
        ini:
          - section: virtomate_connection
            key: ssh_args
      timeout:
        description:
          - Seconds for connecting to the agent and the handshake (C(virtomate --timeout)). An agent that does
            not answer in time makes the host UNREACHABLE.
          - As for Ansible's other connections, Ansible's connection timeout (C(-T), E(ANSIBLE_TIMEOUT),
            C([defaults] timeout), 10 by default) sets it.
        type: float
        default: 10
        vars:
          - name: ansible_virtomate_timeout
        env:
          - name: ANSIBLE_TIMEOUT
          - name: ANSIBLE_VIRTOMATE_TIMEOUT
        ini:
          - section: defaults
            key: timeout
          - section: virtomate_connection
            key: timeout
        cli:
          - name: timeout
      reply_timeout:
        description:
          - Seconds for each single reply of the agent (C(virtomate --reply-timeout)). A program may run longer;
            this bounds each exchange with the agent.
        type: float
        default: 30
        vars:
          - name: ansible_virtomate_reply_timeout
        env:
          - name: ANSIBLE_VIRTOMATE_REPLY_TIMEOUT
        ini:
          - section: virtomate_connection
            key: reply_timeout
      use_session:
        description:
          - V(always) runs the commands of a task (a connection) through one C(virtomate session DOMAIN)
            process, as JSON lines; V(auto) and V(never) run one C(virtomate guest-run) process per command.
          - Either way, with O(persist_seconds), every virtomate process goes through the domain's control
            master, so the agent's connection is kept for the whole play.
        type: string
        default: auto
        choices: [auto, always, never]
        vars:
          - name: ansible_virtomate_use_session
        env:
          - name: ANSIBLE_VIRTOMATE_USE_SESSION
        ini:
          - section: virtomate_connection
            key: use_session
      persist_seconds:
        description:
          - Every virtomate run goes through virtomate's control master (C(virtomate --persist
            PERSIST_SECONDS)), which keeps the connection to the guest's agent between tasks, as SSH's
            ControlPersist does, shared by the tasks and forks of the play, and every later virtomate process
            of the same user. The first run starts it; it stays this many seconds after its last request, ends
            when the VM goes away, and lets go of the agent at once when another client waits for it.
          - The C(reset_connection) meta task ends it (C(virtomate control exit DOMAIN)).
          - With V(0) there is no master, and each virtomate process connects to the agent itself (paying the
            agent's wake-up, up to 100 ms, each time). A virtomate without C(--persist) needs V(0).
        type: float
        default: 60
        vars:
          - name: ansible_virtomate_persist_seconds
        env:
          - name: ANSIBLE_VIRTOMATE_PERSIST_SECONDS
        ini:
          - section: virtomate_connection
            key: persist_seconds
      remote_tmp:
        description:
          - The guest's directory for Ansible's temporary files (the shell's C(remote_tmp), from the same
            settings). Its default is C(/tmp), not C(~/.ansible/tmp), since Ansible would expand C(~) as
            C(~root), which a guest without C(/etc/passwd) (busybox, appliances) cannot, and the task would
            fail with "Failed to create temporary directory". Each task's directory in it has mode 0700.
        type: string
        default: /tmp
        vars:
          - name: ansible_remote_tmp
        env:
          - name: ANSIBLE_REMOTE_TEMP
          - name: ANSIBLE_REMOTE_TMP
        ini:
          - section: defaults
            key: remote_tmp
      file_transfer:
        description:
          - How files move. V(copy) uses virtomate's copies (through the task's session with
            O(use_session=always) when it has them, else C(virtomate copy), gzipped with C(--compress) when
            the file is 64 KiB or more, packs well and the guest has gzip), V(run) writes and reads them
            through runs of C(cat) (any virtomate), V(auto) uses C(copy) when the binary has it.
        type: string
        default: auto
        choices: [auto, copy, run]
        vars:
          - name: ansible_virtomate_file_transfer
        env:
          - name: ANSIBLE_VIRTOMATE_FILE_TRANSFER
      chunk_size:
        description:
          - Bytes per run when files are written through runs (O(file_transfer=run)). The agent holds each
            chunk about four times in the guest's memory; at most a little under 48 MiB.
        type: int
        default: 4194304
        vars:
          - name: ansible_virtomate_chunk_size
        env:
          - name: ANSIBLE_VIRTOMATE_CHUNK_SIZE
      shell_modules:
        description:
          - Whether the C(copy) and C(fetch) actions, and tasks of these modules, run the collection's shell
            modules (C(stat), C(copy), C(file), C(slurp) in POSIX sh) instead of Ansible's Python ones.
            V(auto) uses them on a guest without Python (no C(python3), C(python) on its E(PATH), nor
            C(/usr/libexec/platform-python)), looked for once per guest and run (one command in the guest,
            the first time a task runs a module). Set V(never) for a Python Ansible finds only through
            C(ansible_python_interpreter).
        type: string
        default: auto
        choices: [auto, always, never]
        vars:
          - name: ansible_virtomate_shell_modules
        env:
          - name: ANSIBLE_VIRTOMATE_SHELL_MODULES
        ini:
          - section: virtomate_connection
            key: shell_modules
      remote_user:
        description:
          - The user commands run as before C(become). The agent runs as root, so this is always C(root);
            set only so that Ansible hands files to an unprivileged C(become_user) properly.
        type: string
        default: root
        choices: [root]
"""

EXAMPLES = r"""
# inventory.ini: VMs on this host, by name (libvirt or bare QEMU -name)
# [vms]
# web1
# db1 ansible_virtomate_domain=/run/db1/qga.sock
# [vms:vars]
# ansible_connection=virtomate.guest.virtomate

# VMs on another hypervisor host, virtomate there
# [remote_vms]
# app1 ansible_virtomate_ssh_host=hv2.example.org
# [remote_vms:vars]
# ansible_connection=virtomate.guest.virtomate
# ansible_virtomate_ssh_args=-o ControlMaster=auto -o ControlPersist=60s -o ControlPath=~/.ssh/cm-%C

- hosts: vms
  tasks:
    - ansible.builtin.command: uname -r
    - ansible.builtin.command: whoami
      become: true
      become_user: nobody
      become_method: ansible.builtin.su
"""

import hashlib
import json
import os
from importlib import import_module

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.plugins.loader import module_loader
from ansible.utils.display import Display

# Only what every task needs: Ansible compiles each collection module it
# imports afresh in every task's worker (no cached bytecode), so the rest
# is imported where it is used.
from ansible_collections.virtomate.guest.plugins.plugin_utils.virtomate import (
    GuestRunRunner,
    Virtomate,
    VirtomateError,
)

display = Display()


def _hand_over_option_definitions():
    """Gives Ansible this plugin's option definitions, parsed ahead.

    Ansible loads a collection's connection plugin afresh in every task's
    worker process and parses its DOCUMENTATION (YAML, with the
    connection_pipelining fragment) each time, 7 ms of a `raw` task here;
    it skips that for a plugin whose definitions it already has.
    plugin_utils/connection_options.json holds them as JSON (0.2 ms to
    read), made by tests/unit/plugins/connection/test_options.py, with the
    digest of the documentation it was made from (DOCUMENTATION and this
    ansible-core's fragment): after an edit to either the digests differ
    and Ansible parses it as ever, until the file is made again. Ansible
    keeps a collection plugin's definitions under its module's name; loaded
    under another (ansible-doc, tests), nothing happens.
    """
    name = __name__
    if not name.startswith('ansible_collections.') or C.config.has_configuration_definition('connection', name):
        return
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'plugin_utils', 'connection_options.json')
    try:
        from ansible.plugins.doc_fragments.connection_pipelining import ModuleDocFragment

        with open(path, 'rb') as f:
            cached = json.load(f)
    except (ImportError, OSError, ValueError):
        return
    if cached.get('documentation_sha256') == _documentation_digest(DOCUMENTATION, ModuleDocFragment.DOCUMENTATION):
        C.config.initialize_plugin_configuration_definitions('connection', name, cached['options'])


def _documentation_digest(documentation, fragment):
    """What connection_options.json was made from: the plugin's
    DOCUMENTATION and the connection_pipelining fragment's, as SHA-256."""
    return hashlib.sha256(('%s\0%s' % (documentation, fragment)).encode('utf-8')).hexdigest()


_hand_over_option_definitions()


# qemu-ga often runs without HOME (systemd sets none for system services),
# and `~` then does not expand. The agent runs as root.
_HOME_PRELUDE = 'HOME="${HOME:-/root}"; export HOME\n'


def _route_builtin_names(names, host):
    """Sends ``ansible.builtin.NAME`` asked with the ``.sh`` ending to the
    shell module NAME.sh, as the short name already goes.

    ansible-core looks a builtin module up by ending in ansible.builtin's
    routing metadata first (that is how ``ansible.builtin.slurp`` asked as
    ``.ps1`` becomes ``ansible.windows.slurp``); an entry ``NAME.sh`` that
    redirects to ``ansible.legacy.NAME``, in this worker process's copy of
    it, finds the shell module in the directory just added to the module
    path. The Python lookup (no ending) is left as it is. An ansible-core
    without that metadata keeps the builtin names Python's.
    """
    try:
        meta = import_module('ansible_collections.ansible.builtin')._collection_meta
        routes = meta.setdefault('plugin_routing', {}).setdefault('modules', {})
    except (ImportError, AttributeError) as e:
        display.vvv('VIRTOMATE ansible.builtin names stay Python modules: %s' % e, host=host)
        return
    for name in names:
        routes.setdefault(name + '.sh', {'redirect': 'ansible.legacy.' + name})


class Connection(ConnectionBase):
    """Tasks in a QEMU guest, through the guest agent and virtomate."""

    transport = 'virtomate.guest.virtomate'
    has_pipelining = True
    # Commands run without a terminal (guest-exec has none).
    has_tty = False
    default_user = 'root'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._virtomate = None
        self._runner = None
        # Ansible sets the shell's options after the connection's: the
        # guest's temporary directory is put right after that (remote_tmp).
        shell_set_options = self._shell.set_options

        def set_options(*a, **kw):
            shell_set_options(*a, **kw)
            try:
                self._shell.set_option('remote_tmp', self.get_option('remote_tmp'))
            except KeyError:
                pass  # the connection's options are not set yet

        self._shell.set_options = set_options
        # Whether the guest has no gzip (a `copy --compress` said so).
        self._no_gzip = False
        # Whether modules come from the shell modules (None: not asked yet).
        self._shell_modules = None

    # --- connecting ---------------------------------------------------

    def _make_virtomate(self):
        ssh_args = self.get_option('ssh_args') or ''
        return Virtomate(
            path=self.get_option('virtomate_path'),
            domain=self.get_option('domain'),
            ssh_host=self.get_option('ssh_host') or None,
            ssh_executable=self.get_option('ssh_executable'),
            ssh_args=self._split_ssh_args(ssh_args) if ssh_args else [],
            timeout=self.get_option('timeout'),
            reply_timeout=self.get_option('reply_timeout'),
            persist=self.get_option('persist_seconds'),
        )

    def _connect(self):
        if self._connected:
            return self
        self._virtomate = self._make_virtomate()
        host = self._virtomate.domain
        where = ' on %s' % self._virtomate.ssh_host if self._virtomate.ssh_host else ''
        persist = self._virtomate.persist
        through = ' through its control master (%gs)' % persist if persist and persist > 0 else ''
        if self.get_option('use_session') == 'always':
            from ansible_collections.virtomate.guest.plugins.plugin_utils.session import SessionRunner

            display.vvv('VIRTOMATE SESSION TO %s%s%s' % (host, where, through), host=host)
            self._runner = self._call(SessionRunner, self._virtomate)
        else:
            display.vvv('VIRTOMATE GUEST-RUN TO %s%s%s' % (host, where, through), host=host)
            self._runner = GuestRunRunner(self._virtomate)
        self._connected = True
        return self

    @staticmethod
    def _call(func, *args, **kwargs):
        """Calls FUNC, turning virtomate's failures into Ansible's."""
        try:
            return func(*args, **kwargs)
        except VirtomateError as e:
            if e.unreachable:
                raise AnsibleConnectionFailure(to_native(e))
            raise AnsibleError(to_native(e))

    # --- commands -----------------------------------------------------

    def exec_command(self, cmd, in_data=None, sudoable=True):
        """Runs CMD with /bin/sh in the guest, as a login shell would."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv('EXEC %s' % to_text(cmd), host=self._virtomate.domain)
        argv = ['/bin/sh', '-c', _HOME_PRELUDE + to_text(cmd, errors='surrogate_or_strict')]
        res = self._call(self._runner.run, argv, in_data)
        for name, truncated in (('stdout', res.stdout_truncated), ('stderr', res.stderr_truncated)):
            if truncated:
                display.warning('%s: the guest agent cut %s at its 16 MiB cap' % (self._virtomate.domain, name))
        stdout = res.stdout
        if sudoable and self.become and getattr(self.become, '_id', None):
            stdout = self._check_become(res.rc, stdout, res.stderr)
        return res.rc, stdout, res.stderr

    def _check_become(self, rc, stdout, stderr):
        """Drops the become command's success marker; no marker, no become."""
        if self.become.check_success(stdout):
            if hasattr(self.become, 'strip_become_success'):
                return self.become.strip_become_success(stdout)
            marker = to_bytes(self.become.success)
            return stdout[stdout.index(marker) + len(marker):].lstrip(b'\r\n')
        raise AnsibleError('%s: become (%s) did not succeed: exit status %d, stdout: %s, stderr: %s'
                           % (self._virtomate.domain, getattr(self.become, 'name', 'become'), rc,
                              to_text(stdout[:500]).strip(), to_text(stderr[:500]).strip()))

    # --- modules ------------------------------------------------------

    @property
    def module_implementation_preferences(self):
        """The endings Ansible looks for a module's file with, in order; read
        only when a task runs a module. On a guest without Python: `.sh`
        first, from the collection's shell modules."""
        return ('.sh', '') if self._uses_shell_modules() else ('',)

    def _uses_shell_modules(self):
        if self._shell_modules is None:
            from ansible_collections.virtomate.guest.plugins.plugin_utils.shell_modules import (
                SHELL_MODULES,
                SHELL_MODULES_DIR,
                ProbeError,
                cache_name,
                wants_shell_modules,
            )

            virtomate = self._virtomate or self._make_virtomate()
            cache = os.path.join(C.DEFAULT_LOCAL_TMP, cache_name(virtomate.ssh_host, virtomate.domain))
            try:
                self._shell_modules = self._call(wants_shell_modules, self.get_option('shell_modules'),
                                                 self._probe_python, cache)
            except ProbeError as e:
                raise AnsibleError('%s: %s' % (virtomate.domain, e))
            if self._shell_modules:
                display.vvv('VIRTOMATE SHELL MODULES FROM %s' % SHELL_MODULES_DIR, host=virtomate.domain)
                # This worker process's loader: one task, one host.
                module_loader.add_directory(SHELL_MODULES_DIR)
                _route_builtin_names(SHELL_MODULES, virtomate.domain)
        return self._shell_modules

    def _probe_python(self):
        """Whether the guest has Python: the probe's exit status."""
        from ansible_collections.virtomate.guest.plugins.plugin_utils.shell_modules import PYTHON_PROBE

        self._connect()
        return self._runner.run(['/bin/sh', '-c', PYTHON_PROBE]).rc

    # --- files --------------------------------------------------------

    def _use_copy(self):
        mode = self.get_option('file_transfer')
        if mode == 'copy':
            return True
        if mode == 'run':
            return False
        return self._call(self._virtomate.has_command, 'copy')

    def _copy(self, src, dest, stdin_path=None, stdout_path=None, compress=False):
        display.vvv('COPY %s%s %s' % ('--compress ' if compress else '', src, dest), host=self._virtomate.domain)
        try:
            self._virtomate.copy(src, dest, stdin_path=stdin_path, stdout_path=stdout_path, compress=compress)
        except VirtomateError as e:
            # A guest without gzip: said before anything was written.
            if compress and 'cannot run gzip' in str(e):
                self._no_gzip = True
                return self._copy(src, dest, stdin_path=stdin_path, stdout_path=stdout_path)
            raise (AnsibleConnectionFailure if e.unreachable else AnsibleError)(to_native(e))

    def _through_session(self, method, in_path, out_path):
        """Moves a file through the session's copies, when there is a
        session and it has them: True if it did. A session of a virtomate
        without them answers `UsageError`, and files go by `virtomate
        copy` from then on."""
        runner = self._runner
        if not hasattr(runner, method) or getattr(runner, 'no_copies', False):
            return False
        try:
            getattr(runner, method)(in_path, out_path)
        except VirtomateError as e:
            if e.error_type != 'UsageError':
                raise (AnsibleConnectionFailure if e.unreachable else AnsibleError)(to_native(e))
            runner.no_copies = True
            return False
        return True

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv('PUT %s TO %s' % (in_path, out_path), host=self._virtomate.domain)
        if not os.path.exists(to_bytes(in_path, errors='surrogate_or_strict')):
            raise AnsibleFileNotFound('file or module does not exist: %s' % in_path)
        if self._use_copy() and self._through_session('put_file', in_path, out_path):
            return
        from ansible_collections.virtomate.guest.plugins.plugin_utils.transfer import (
            put_file_chunked,
            worth_compressing,
        )

        if self._use_copy():
            guest = '%s:%s' % (self._virtomate.domain, out_path)
            compress = not self._no_gzip and worth_compressing(in_path)
            if self._virtomate.ssh_host:
                self._copy('-', guest, stdin_path=in_path, compress=compress)
            else:
                self._copy(in_path, guest, compress=compress)
        else:
            self._call(put_file_chunked, self._runner, in_path, out_path, self.get_option('chunk_size'))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv('FETCH %s TO %s' % (in_path, out_path), host=self._virtomate.domain)
        if self._use_copy() and self._through_session('fetch_file', in_path, out_path):
            return
        from ansible_collections.virtomate.guest.plugins.plugin_utils.transfer import fetch_file_chunked

        if self._use_copy():
            guest = '%s:%s' % (self._virtomate.domain, in_path)
            if self._virtomate.ssh_host:
                self._copy(guest, '-', stdout_path=out_path)
            else:
                self._copy(guest, out_path)
        else:
            self._call(fetch_file_chunked, self._runner, in_path, out_path)

    # --- closing ------------------------------------------------------

    def close(self):
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        self._connected = False

    def reset(self):
        """meta: reset_connection: the domain's control master, if any, goes."""
        self.close()
        virtomate = self._virtomate or self._make_virtomate()
        if virtomate.persist and virtomate.persist > 0:
            self._call(virtomate.stop_master)
