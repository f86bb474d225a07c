"""Unit tests of the connection plugin with ansible-core: which modules a
guest gets (Python or the shell modules), looked up by Ansible's module
loader. The guest is a fake `virtomate session` (fake_session.py) that runs
programs on this host.

Run: python3 tests/unit/plugins/connection/test_virtomate.py (from the
collection, with ansible-core installed), or through scripts/test-ansible.sh.
"""

import os
import shutil
import stat
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRIB = os.path.abspath(os.path.join(HERE, *(['..'] * 7)))
FAKE = os.path.join(HERE, '..', 'plugin_utils', 'fake_session.py')
# The run's local temporary directory, where the probe's answer is kept.
LOCAL_TMP = tempfile.mkdtemp(prefix='virtomate-unit-local-')
os.environ['ANSIBLE_LOCAL_TEMP'] = LOCAL_TMP

from ansible import constants as C  # noqa: E402
from ansible.executor.module_common import modify_module  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.playbook.play_context import PlayContext  # noqa: E402
from ansible.plugins.loader import connection_loader, module_loader  # noqa: E402
from ansible.template import Templar  # noqa: E402
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402

_AnsibleCollectionFinder(paths=[CONTRIB])._install()

from ansible_collections.virtomate.guest.plugins.plugin_utils.shell_modules import (  # noqa: E402
    SHELL_MODULES,
    SHELL_MODULES_DIR,
    cache_name,
)


def connection(**options):
    conn = connection_loader.get('virtomate.guest.virtomate', PlayContext())
    conn.set_options(direct=options)
    return conn


class ModulesTest(unittest.TestCase):

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(LOCAL_TMP, ignore_errors=True)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='virtomate-unit-')
        self.addCleanup(shutil.rmtree, self.dir)

    def preferences(self, conn):
        try:
            return conn.module_implementation_preferences
        finally:
            conn.close()

    def test_never_is_python_without_asking_the_guest(self):
        conn = connection(domain='vm-never', shell_modules='never', virtomate_path='/nonexistent/virtomate')
        self.assertEqual(self.preferences(conn), ('',))

    def test_auto_on_a_guest_with_python_keeps_python(self):
        conn = connection(domain='vm-python', use_session='always', virtomate_path=FAKE, persist_seconds=0)
        self.assertEqual(self.preferences(conn), ('',))
        self.assertTrue(os.path.exists(os.path.join(C.DEFAULT_LOCAL_TMP, cache_name(None, 'vm-python'))))
        # The next task's connection reads the answer, asks the guest nothing.
        conn = connection(domain='vm-python', virtomate_path='/nonexistent/virtomate')
        self.assertEqual(self.preferences(conn), ('',))

    def test_auto_on_a_guest_without_python_takes_the_shell_modules(self):
        # The fake session's programs find no python on PATH.
        wrapper = os.path.join(self.dir, 'virtomate')
        with open(wrapper, 'w') as f:
            f.write('#!/bin/sh\npy=%s\nPATH=/nonexistent exec "$py" %s "$@"\n' % (sys.executable, FAKE))
        os.chmod(wrapper, stat.S_IRWXU)
        conn = connection(domain='vm-no-python', use_session='always', virtomate_path=wrapper, persist_seconds=0)
        self.assertEqual(self.preferences(conn), ('.sh', ''))
        self.check_lookups()

    def check_lookups(self):
        """The copy and fetch actions' modules are found as shell modules,
        old-style (arguments in a file), run with /bin/sh; others not."""
        for name in SHELL_MODULES:
            found = module_loader.find_plugin_with_context('ansible.legacy.' + name, '.sh')
            self.assertEqual(found.plugin_resolved_path, os.path.join(SHELL_MODULES_DIR, name + '.sh'))
            built = modify_module(module_name='ansible.legacy.' + name, module_path=found.plugin_resolved_path,
                                  module_args={'path': '/x'}, templar=Templar(loader=DataLoader()),
                                  task_vars={})
            self.assertEqual((built.module_style, built.shebang), ('old', '#!/bin/sh'))
        self.assertFalse(module_loader.find_plugin_with_context('ansible.legacy.command', '.sh').resolved)
        # The builtin names too (a task's `ansible.builtin.file:`), asked as
        # `.sh`; asked without an ending they are still Python's.
        for name in SHELL_MODULES:
            found = module_loader.find_plugin_with_context('ansible.builtin.' + name, '.sh')
            self.assertEqual(found.plugin_resolved_path, os.path.join(SHELL_MODULES_DIR, name + '.sh'))
            found = module_loader.find_plugin_with_context('ansible.builtin.' + name, '')
            self.assertTrue(found.plugin_resolved_path.endswith('/ansible/modules/%s.py' % name), found.plugin_resolved_path)
        self.assertFalse(module_loader.find_plugin_with_context('ansible.builtin.command', '.sh').resolved)

    def test_always_without_asking_the_guest(self):
        conn = connection(domain='vm-always', shell_modules='always', virtomate_path='/nonexistent/virtomate')
        self.assertEqual(self.preferences(conn), ('.sh', ''))
        self.check_lookups()


if __name__ == '__main__':
    unittest.main()
