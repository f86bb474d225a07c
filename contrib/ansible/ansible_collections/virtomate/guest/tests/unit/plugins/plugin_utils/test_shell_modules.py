"""Unit tests of the choice between Python modules and the shell modules
(plugins/plugin_utils/shell_modules.py).

Run: python3 tests/unit/plugins/plugin_utils/test_shell_modules.py (from the
collection), or through scripts/test-ansible.sh.
"""

import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# contrib/ansible, where ansible_collections/ lives.
sys.path.insert(0, os.path.abspath(os.path.join(HERE, *(['..'] * 7))))

from ansible_collections.virtomate.guest.plugins.plugin_utils import shell_modules as sm  # noqa: E402


class Probe:
    """A probe that answers RC and counts its runs."""

    def __init__(self, rc):
        self.rc = rc
        self.runs = 0

    def __call__(self):
        self.runs += 1
        return self.rc


class ChoiceTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='virtomate-choice-')
        self.addCleanup(shutil.rmtree, self.dir)
        self.cache = os.path.join(self.dir, sm.cache_name(None, 'vm1'))

    def test_always_and_never_ask_the_guest_nothing(self):
        probe = Probe(0)
        self.assertTrue(sm.wants_shell_modules('always', probe, self.cache))
        self.assertFalse(sm.wants_shell_modules('never', Probe(1), self.cache))
        self.assertEqual(probe.runs, 0)
        self.assertFalse(os.path.exists(self.cache))

    def test_auto_probes_once_per_guest_and_run(self):
        probe = Probe(1)
        self.assertTrue(sm.wants_shell_modules('auto', probe, self.cache))
        # A later task (another worker process) reads the cache.
        self.assertTrue(sm.wants_shell_modules('auto', probe, self.cache))
        self.assertEqual(probe.runs, 1)
        other = os.path.join(self.dir, sm.cache_name(None, 'vm2'))
        python = Probe(0)
        self.assertFalse(sm.wants_shell_modules('auto', python, other))
        self.assertFalse(sm.wants_shell_modules('auto', python, other))
        self.assertEqual(python.runs, 1)
        self.assertEqual(sorted(os.listdir(self.dir)), sorted([os.path.basename(self.cache), os.path.basename(other)]))

    def test_a_probe_that_does_not_say_is_an_error_and_not_cached(self):
        with self.assertRaises(sm.ProbeError) as cm:
            sm.wants_shell_modules('auto', Probe(127), self.cache)
        self.assertIn('exit status 127', str(cm.exception))
        self.assertFalse(os.path.exists(self.cache))

    def test_a_damaged_cache_is_probed_again(self):
        with open(self.cache, 'w') as f:
            f.write('no-pyth')
        self.assertFalse(sm.wants_shell_modules('auto', Probe(0), self.cache))

    def test_the_same_domain_on_another_host_is_another_guest(self):
        self.assertNotEqual(sm.cache_name(None, 'vm1'), sm.cache_name('hv2', 'vm1'))
        self.assertEqual(sm.cache_name('hv2', 'vm1'), sm.cache_name('hv2', 'vm1'))

    def test_unknown_setting(self):
        with self.assertRaises(ValueError):
            sm.wants_shell_modules('sometimes', Probe(0))

    def test_the_modules_are_one_script_under_four_names(self):
        names = sorted(f for f in os.listdir(sm.SHELL_MODULES_DIR)
                       if os.path.isfile(os.path.join(sm.SHELL_MODULES_DIR, f)))
        self.assertEqual(names, [m + '.sh' for m in sm.SHELL_MODULES])
        targets = {os.path.realpath(os.path.join(sm.SHELL_MODULES_DIR, n)) for n in names}
        self.assertEqual(len(targets), 1)
        self.assertTrue(os.access(targets.pop(), os.X_OK))


if __name__ == '__main__':
    unittest.main()
