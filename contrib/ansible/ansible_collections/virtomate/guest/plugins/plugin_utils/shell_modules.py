# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""Whether a guest gets the collection's shell modules instead of Python's.

Ansible's copy and fetch actions run the stat, copy, file and slurp modules
in the guest, which are Python. ``plugins/shell_modules`` holds POSIX sh
implementations of them (``stat.sh``, ...) for guests without Python: the
connection adds that directory to Ansible's module path and asks for the
``.sh`` ending first (``module_implementation_preferences``), as the
Windows connections ask for ``.ps1``. Any other module is still looked up
as Python, and fails as it would without the plugin.

No Ansible import here, so that the unit tests can drive it with any Python.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

SHELL_MODULES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'shell_modules')
SHELL_MODULES = ('copy', 'file', 'slurp', 'stat')
CHOICES = ('auto', 'always', 'never')

# Exit status 0 when the guest has a Python Ansible would find by itself.
PYTHON_PROBE = ('command -v python3 >/dev/null 2>&1 || command -v python >/dev/null 2>&1'
                ' || [ -x /usr/libexec/platform-python ]')

# What the cache file says.
_HAS_PYTHON = 'python\n'
_NO_PYTHON = 'no-python\n'


class ProbeError(Exception):
    """The probe ran but did not say (an exit status other than 0 or 1)."""


def cache_name(ssh_host, domain):
    """The cache file's name for a guest: its domain, on its host."""
    key = '%s\0%s' % (ssh_host or '', domain)
    return 'virtomate-python-' + hashlib.sha1(key.encode('utf-8', 'surrogateescape')).hexdigest()[:20]


def wants_shell_modules(setting, probe, cache_path=None):
    """Whether the guest gets the shell modules.

    SETTING is the connection's ``shell_modules`` option. With ``auto``,
    PROBE() runs PYTHON_PROBE in the guest and gives its exit status; the
    answer is kept in CACHE_PATH (a file in the run's local temporary
    directory, shared by the forks), so each guest is probed once a run.
    """
    if setting not in CHOICES:
        raise ValueError('shell_modules must be one of %s, not %r' % ('/'.join(CHOICES), setting))
    if setting != 'auto':
        return setting == 'always'
    if cache_path:
        try:
            with open(cache_path) as f:
                cached = f.read()
            if cached in (_HAS_PYTHON, _NO_PYTHON):
                return cached == _NO_PYTHON
        except FileNotFoundError:
            pass
    rc = probe()
    if rc not in (0, 1):
        raise ProbeError('looking for Python in the guest (%s) ended with exit status %s' % (PYTHON_PROBE, rc))
    if cache_path:
        _write_atomically(cache_path, _NO_PYTHON if rc else _HAS_PYTHON)
    return rc == 1


def _write_atomically(path, text):
    """Writes TEXT to PATH by a rename: a fork reading it sees all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.virtomate-')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
