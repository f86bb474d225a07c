"""Unit tests of the connection plugin's helpers, the session client against
a fake `virtomate session` (fake_session.py) that runs programs here.

Run: python3 -m unittest discover -s tests/unit -t . (from the collection),
or through scripts/test-ansible.sh.
"""

import os
import shlex
import stat
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
# contrib/ansible, where ansible_collections/ lives.
sys.path.insert(0, os.path.abspath(os.path.join(HERE, *(['..'] * 7))))

from ansible_collections.virtomate.guest.plugins.plugin_utils import session as vs  # noqa: E402
from ansible_collections.virtomate.guest.plugins.plugin_utils import transfer as vt  # noqa: E402
from ansible_collections.virtomate.guest.plugins.plugin_utils import virtomate as vm  # noqa: E402

FAKE = os.path.join(HERE, 'fake_session.py')


def session(domain='vm1'):
    return vs.SessionRunner(vm.Virtomate(path=FAKE, domain=domain, timeout=5))


class SessionTest(unittest.TestCase):

    def setUp(self):
        self.s = session()

    def tearDown(self):
        if self.s:
            self.s.close()

    def test_run_gives_exit_status_and_bytes(self):
        res = self.s.run(['sh', '-c', 'printf "a\\0b"; printf err >&2; exit 3'])
        self.assertEqual((res.rc, res.stdout, res.stderr), (3, b'a\0b', b'err'))

    def test_stdin_is_passed_as_base64(self):
        data = bytes(range(256)) * 100
        self.assertEqual(self.s.run(['cat'], stdin=data).stdout, data)

    def test_empty_stdin_and_no_output(self):
        res = self.s.run(['cat'], stdin=b'')
        self.assertEqual((res.rc, res.stdout, res.stderr), (0, b'', b''))

    def test_signal_is_128_plus(self):
        self.assertEqual(self.s.run(['sh', '-c', 'kill -9 $$']).rc, 137)

    def test_many_requests_on_one_process(self):
        pid = self.s._proc.pid
        for i in range(20):
            self.assertEqual(self.s.run(['echo', str(i)]).stdout, b'%d\n' % i)
        self.assertEqual(self.s._proc.pid, pid)
        self.assertEqual(self.s.ping(), {})

    def test_replies_out_of_order_wait_for_their_asker(self):
        # A request of someone else's, pipelined before ours, ends first.
        self.s._proc.stdin.write(b'{"id":"other","run":["echo","early"],"encode":true}\n')
        res = self.s.run(['sh', '-c', 'sleep 0.3; echo ours'])
        self.assertEqual(res.stdout, b'ours\n')
        self.assertEqual(self.s._replies['other']['result']['stdout'], 'ZWFybHkK')

    def test_error_reply_is_a_task_failure(self):
        with self.assertRaises(vm.VirtomateError) as cm:
            self.s.run(['/does/not/exist'])
        self.assertEqual(cm.exception.error_type, 'AgentCommandError')
        self.assertFalse(cm.exception.unreachable)
        # The session goes on.
        self.assertEqual(self.s.run(['echo', 'ok']).stdout, b'ok\n')

    def test_lost_session_is_unreachable_with_its_stderr(self):
        with self.assertRaises(vm.VirtomateError) as cm:
            self.s.run(['die-now'])
        self.assertTrue(cm.exception.unreachable)
        self.assertIn('the agent went away', str(cm.exception))
        with self.assertRaises(vm.VirtomateError):
            self.s.run(['echo', 'again'])

    def test_unknown_domain_is_unreachable_with_virtomates_message(self):
        self.s.close()
        self.s = session('missing')
        with self.assertRaises(vm.VirtomateError) as cm:
            self.s.run(['true'])
        self.assertEqual(cm.exception.error_type, 'NotFoundError')
        self.assertTrue(cm.exception.unreachable)
        self.assertIn("Domain 'missing' does not exist", str(cm.exception))

    def test_close_is_eof_and_exit_0(self):
        self.s.run(['true'])
        self.s.close()
        self.assertEqual(self.s._proc.returncode, 0)
        self.s = None

    def test_too_much_stdin_is_refused_before_sending(self):
        with self.assertRaises(vm.VirtomateError) as cm:
            self.s.run(['cat'], stdin=b'x' * (vm.MAX_STDIN + 1))
        self.assertEqual(cm.exception.error_type, 'InputTooLarge')

    def test_copies_through_the_session_keep_bytes_and_mode(self):
        with tempfile.TemporaryDirectory() as d:
            src, inside, back = (os.path.join(d, n) for n in ('src', 'inside', 'back'))
            data = os.urandom(3 * 1024 * 1024 + 7)
            with open(src, 'wb') as f:
                f.write(data)
            os.chmod(src, 0o640)
            self.assertEqual(self.s.put_file(src, inside)['bytes'], len(data))
            self.assertEqual(stat.S_IMODE(os.stat(inside).st_mode), 0o640)
            # A run in between: the session goes on.
            self.assertEqual(self.s.run(['echo', 'between']).stdout, b'between\n')
            self.assertEqual(self.s.fetch_file(inside, back)['bytes'], len(data))
            with open(back, 'rb') as f:
                self.assertEqual(f.read(), data)
            with self.assertRaises(vm.VirtomateError) as cm:
                self.s.fetch_file(os.path.join(d, 'missing'), os.path.join(d, 'nothing'))
            self.assertEqual(cm.exception.error_type, 'PathError')
            self.assertFalse(os.path.exists(os.path.join(d, 'nothing')))

    def test_a_session_without_copies_refuses_them_as_a_usage_error(self):
        os.environ['FAKE_SESSION_NO_COPIES'] = '1'
        try:
            old = session()
            with tempfile.NamedTemporaryFile() as src:
                with self.assertRaises(vm.VirtomateError) as cm:
                    old.put_file(src.name, src.name + '.copy')
            self.assertEqual(cm.exception.error_type, 'UsageError')
            self.assertEqual(old.run(['echo', 'still']).stdout, b'still\n')
            old.close()
        finally:
            del os.environ['FAKE_SESSION_NO_COPIES']

    def test_files_over_the_session(self):
        with tempfile.TemporaryDirectory() as d:
            src, dst, back = (os.path.join(d, n) for n in ('src', 'dst with space', 'back'))
            data = os.urandom(300 * 1024 + 7)
            with open(src, 'wb') as f:
                f.write(data)
            vt.put_file_chunked(self.s, src, dst, chunk_size=64 * 1024)
            with open(dst, 'rb') as f:
                self.assertEqual(f.read(), data)
            vt.fetch_file_chunked(self.s, dst, back)
            with open(back, 'rb') as f:
                self.assertEqual(f.read(), data)
            with self.assertRaises(vm.VirtomateError) as cm:
                vt.fetch_file_chunked(self.s, os.path.join(d, 'missing'), back)
            self.assertFalse(cm.exception.unreachable)


class CappedRunner:
    """Runs programs here, cutting stdout at CAP bytes as the agent cuts at 16 MiB."""

    def __init__(self, cap):
        self.cap = cap
        self.calls = 0

    def run(self, argv, stdin=None):
        import subprocess
        self.calls += 1
        p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return vm.RunResult(p.returncode, p.stdout[:self.cap], p.stderr, len(p.stdout) > self.cap)


class HelpersTest(unittest.TestCase):

    def test_fetch_past_the_output_cap_goes_on_in_chunks(self):
        with tempfile.TemporaryDirectory() as d:
            src, back = os.path.join(d, 'src'), os.path.join(d, 'back')
            data = os.urandom(10000)
            with open(src, 'wb') as f:
                f.write(data)
            runner = CappedRunner(4096)
            vt.fetch_file_chunked(runner, src, back, chunk_size=3000)
            with open(back, 'rb') as f:
                self.assertEqual(f.read(), data)
            # cat (4096 of 10000), a full chunk of 3000, the last 2904.
            self.assertEqual(runner.calls, 3)

    def test_ssh_argv_quotes_each_word_for_the_remote_shell(self):
        v = vm.Virtomate(path='/opt/virtomate', domain="it's a vm", ssh_host='hv1', ssh_args=['-o', 'BatchMode=yes'],
                         timeout=2.5)
        argv = v.argv(['guest-run', v.domain, '--', '/bin/sh', '-c', 'echo "$HOME" $(id -u); a;b'])
        self.assertEqual(argv[:5], ['ssh', '-o', 'BatchMode=yes', '--', 'hv1'])
        self.assertEqual(shlex.split(argv[5]), ['/opt/virtomate', '--timeout', '2.5', 'guest-run', "it's a vm", '--',
                                                '/bin/sh', '-c', 'echo "$HOME" $(id -u); a;b'])

    def test_persist_goes_through_the_control_master(self):
        v = vm.Virtomate(path='/opt/virtomate', domain='vm', ssh_host='hv1', timeout=2, persist=60)
        self.assertEqual(shlex.split(v.argv(['guest-run', 'vm', '--', 'true'])[-1]),
                         ['/opt/virtomate', '--timeout', '2', '--persist', '60', 'guest-run', 'vm', '--', 'true'])
        self.assertNotIn('--persist', vm.Virtomate(domain='vm', persist=0).argv(['guest-ping', 'vm']))

    def test_a_virtomate_without_persist_says_what_to_set(self):
        with self.assertRaises(vm.VirtomateError) as cm:
            vm.Virtomate(domain='x', persist=60).check_process_failure(
                2, b'', b"error: unexpected argument '--persist' found", 'guest-run x')
        self.assertIn('persist_seconds=0', str(cm.exception))
        self.assertFalse(cm.exception.unreachable)

    def test_only_big_files_that_pack_well_are_compressed(self):
        with tempfile.TemporaryDirectory() as d:
            def file(name, data):
                path = os.path.join(d, name)
                with open(path, 'wb') as f:
                    f.write(data)
                return path
            text = b''.join(b'line %d of a log, as text goes\n' % i for i in range(20000))
            self.assertTrue(vt.worth_compressing(file('text', text)))
            self.assertFalse(vt.worth_compressing(file('small', text[:vt.COMPRESS_MIN - 1])))
            self.assertFalse(vt.worth_compressing(file('random', os.urandom(len(text)))))
            self.assertFalse(vt.worth_compressing(os.path.join(d, 'missing')))

    def test_json_errors_map_to_unreachable_or_failure(self):
        v = vm.Virtomate(domain='x')
        for etype, unreachable in (('NotFoundError', True), ('AgentTimeout', True), ('AgentDisconnected', True),
                                   ('AgentCommandError', False), ('InputTooLarge', False)):
            out = ('{"message":"m","type":"%s"}\n' % etype).encode()
            with self.assertRaises(vm.VirtomateError) as cm:
                v.check_process_failure(1, out, b'', 'guest-run x')
            self.assertEqual((cm.exception.error_type, cm.exception.unreachable), (etype, unreachable))
        with self.assertRaises(vm.VirtomateError) as cm:
            vm.Virtomate(domain='x', ssh_host='hv').check_process_failure(255, b'', b'Connection refused', 'c')
        self.assertTrue(cm.exception.unreachable)
        self.assertIn('Connection refused', str(cm.exception))

    def test_commands_from_clap_help(self):
        text = ('Run programs\n\nUsage: virtomate [OPTIONS] <COMMAND>\n\nCommands:\n'
                '  guest-run    Run a program\n  session      Many\n  copy         Files\n'
                '  help         Print this message\n\nOptions:\n  -p, --pretty  Indent\n')
        self.assertEqual(vm.parse_commands(text), {'guest-run', 'session', 'copy', 'help'})

    def test_commands_from_help_in_sections(self):
        text = ('Run programs\n\nUsage: virtomate [OPTIONS] <COMMAND>\n\nRunning programs:\n'
                '  guest-run     Run a program\n  session       Many\n\nFiles:\n  copy          Files\n'
                '\nOptions:\n  -p, --pretty  Indent\n      --persist <SECONDS>  Master\n')
        self.assertEqual(vm.parse_commands(text), {'guest-run', 'session', 'copy'})


if __name__ == '__main__':
    unittest.main()
