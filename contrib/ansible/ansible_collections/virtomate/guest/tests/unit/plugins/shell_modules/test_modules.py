"""Unit tests of the shell modules (plugins/shell_modules) under busybox's
sh on this host, with their arguments in the file Ansible writes for an
old-style module, and their JSON answers as the copy and fetch actions read
them. Needs busybox (scripts/build-test-vm.sh needs it too).

Run: python3 tests/unit/plugins/shell_modules/test_modules.py (from the
collection), or through scripts/test-ansible.sh.
"""

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = os.path.abspath(os.path.join(HERE, '..', '..', '..', '..', 'plugins', 'shell_modules'))
BUSYBOX = shutil.which('busybox')


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def read(path):
    with open(path, 'rb') as f:
        return f.read()


class ShellModuleTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not BUSYBOX:
            raise AssertionError('these tests need busybox on PATH (apt-get install busybox-static)')

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='virtomate-shell-modules-')
        self.addCleanup(shutil.rmtree, self.dir)
        # Ansible's temporary directory in the guest: the module and its arguments.
        self.tmp = tempfile.mkdtemp(prefix='virtomate-shell-modules-tmp-')
        self.addCleanup(shutil.rmtree, self.tmp)

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def write(self, name, data, mode=0o644):
        with open(self.path(name), 'wb') as f:
            f.write(data)
        os.chmod(self.path(name), mode)
        return self.path(name)

    def run_module(self, name, **args):
        """Runs NAME.sh as Ansible does: (exit status, JSON answer)."""
        args.setdefault('_ansible_check_mode', False)
        args.setdefault('_ansible_diff', False)
        args.setdefault('_ansible_tracebacks_for', [])
        args_file = os.path.join(self.tmp, 'args')
        with open(args_file, 'w') as f:
            # How Ansible writes an old-style module's arguments.
            f.write(''.join('%s=%s ' % (k, shlex.quote(str(v))) for k, v in args.items()))
        # Named as Ansible names it.
        module = os.path.join(self.tmp, 'AnsiballZ_%s.sh' % name)
        shutil.copy(os.path.join(MODULES, name + '.sh'), module)
        p = subprocess.run([BUSYBOX, 'sh', module, args_file], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           check=False, timeout=30)
        self.assertEqual(p.stderr, b'', 'stderr of %s' % name)
        return p.returncode, json.loads(p.stdout)

    def ok(self, name, **args):
        rc, res = self.run_module(name, **args)
        self.assertEqual(rc, 0, res)
        self.assertNotIn('failed', res)
        return res

    def failure(self, name, **args):
        rc, res = self.run_module(name, **args)
        self.assertEqual((rc, res.get('failed')), (1, True), res)
        return res['msg']

    # --- stat ---------------------------------------------------------

    def test_stat_of_a_file_as_the_actions_ask(self):
        path = self.write('f', b'hello\n', 0o640)
        st = self.ok('stat', path=path, follow=False, get_checksum=True, get_size=False,
                     checksum_algorithm='sha1', _ansible_ignore_unknown_opts=True)['stat']
        self.assertEqual((st['exists'], st['isreg'], st['isdir'], st['islnk']), (True, True, False, False))
        self.assertEqual((st['mode'], st['size'], st['checksum']), ('0640', 6, sha1(b'hello\n')))

    def test_stat_of_what_is_missing_a_directory_and_a_link(self):
        self.assertEqual(self.ok('stat', path=self.path('nothing'))['stat'], {'exists': False})
        os.mkdir(self.path('d'), 0o750)
        st = self.ok('stat', path=self.path('d'))['stat']
        self.assertEqual((st['isdir'], st['mode']), (True, '0750'))
        self.assertNotIn('checksum', st)
        self.write('target', b'x')
        os.symlink('target', self.path('link'))
        st = self.ok('stat', path=self.path('link'), follow=False)['stat']
        self.assertEqual((st['islnk'], st['lnk_target'], st['lnk_source']), (True, 'target', self.path('target')))
        st = self.ok('stat', path=self.path('link'), follow=True)['stat']
        self.assertEqual((st['islnk'], st['isreg'], st['checksum']), (False, True, sha1(b'x')))

    def test_stat_names_in_json_whatever_their_characters(self):
        name = 'a "quoted" \\ name\twith\nnewline and \'single\' $(quotes)'
        path = self.write(name, b'')
        self.assertEqual(self.ok('stat', path=path)['stat']['path'], path)

    def test_stat_other_checksums_and_refusals(self):
        path = self.write('f', b'abc')
        self.assertEqual(self.ok('stat', path=path, checksum_algorithm='sha256')['stat']['checksum'],
                         hashlib.sha256(b'abc').hexdigest())
        self.assertIn('checksum_algorithm sha384 is not supported',
                      self.failure('stat', path=path, checksum_algorithm='sha384'))
        self.assertIn("option 'get_mime' is not supported on a guest without Python",
                      self.failure('stat', path=path, get_mime=True))
        # Asked as false, it asks for nothing.
        self.ok('stat', path=path, get_mime=False)

    # --- copy ---------------------------------------------------------

    def copy_args(self, src, dest, **more):
        args = dict(src=src, dest=dest, _original_basename=os.path.basename(src), follow=False,
                    checksum=sha1(read(src)))
        args.update(more)
        return args

    def test_copy_writes_the_file_with_its_mode_then_changes_nothing(self):
        data = bytes(range(256)) * 100
        src = self.write('.source', data, 0o600)
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), mode='0640'))
        self.assertEqual((res['changed'], res['dest'], res['checksum'], res['mode'], res['size']),
                         (True, self.path('dest'), sha1(data), '0640', len(data)))
        self.assertEqual(read(self.path('dest')), data)
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), mode='0640'))
        self.assertEqual((res['changed'], res['mode']), (False, '0640'))
        # Only the mode differs: changed.
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), mode='u=rw,go='))
        self.assertEqual((res['changed'], res['mode']), (True, '0600'))

    def test_copy_into_a_directory_keeps_an_existing_files_mode(self):
        os.mkdir(self.path('d'))
        self.write(os.path.join('d', 'conf'), b'old', 0o604)
        src = self.write('conf', b'new')
        res = self.ok('copy', **self.copy_args(src, self.path('d') + '/'))
        self.assertEqual((res['changed'], res['dest'], res['mode']), (True, self.path('d', 'conf'), '0604'))
        self.assertEqual(sorted(os.listdir(self.path('d'))), ['conf'])

    def test_copy_sets_numeric_owner_and_group(self):
        self.assertEqual(os.geteuid(), 0, 'this test needs root (chown), as scripts/test-ansible.sh runs')
        src = self.write('src', b'data')
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), owner='1', group='2'))
        self.assertEqual((res['changed'], res['uid'], res['gid']), (True, 1, 2))
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), owner='1', group='2'))
        self.assertFalse(res['changed'])

    def test_copy_without_force_leaves_what_is_there(self):
        self.write('dest', b'old')
        src = self.write('src', b'new')
        self.assertFalse(self.ok('copy', **self.copy_args(src, self.path('dest'), force=False))['changed'])
        self.assertEqual(read(self.path('dest')), b'old')

    def test_copy_in_check_mode_changes_nothing(self):
        src = self.write('src', b'new')
        res = self.ok('copy', **self.copy_args(src, self.path('dest'), _ansible_check_mode=True))
        self.assertTrue(res['changed'])
        self.assertFalse(os.path.exists(self.path('dest')))

    def test_copy_failures_say_why(self):
        src = self.write('src', b'data')
        self.assertIn('does not match the expected checksum',
                      self.failure('copy', **self.copy_args(src, self.path('dest'), checksum='0' * 40)))
        self.assertIn('Destination directory %s does not exist' % self.path('no'),
                      self.failure('copy', **self.copy_args(src, self.path('no', 'dest'))))
        self.assertIn("option 'validate' is not supported",
                      self.failure('copy', **self.copy_args(src, self.path('dest'), validate='visudo -cf %s')))
        self.assertIn("option 'backup' is not supported",
                      self.failure('copy', **self.copy_args(src, self.path('dest'), backup=True)))
        self.assertIn('diff mode is not supported',
                      self.failure('copy', **self.copy_args(src, self.path('dest'), _ansible_diff=True)))
        self.assertIn('bad mode', self.failure('copy', **self.copy_args(src, self.path('dest'), mode='0999')))
        self.assertIn('Source %s not found' % self.path('none'),
                      self.failure('copy', src=self.path('none'), dest=self.path('dest')))
        self.assertFalse(os.path.exists(self.path('dest')))

    # --- file ---------------------------------------------------------

    def test_file_sets_the_mode_of_a_copied_file_as_the_copy_action_asks(self):
        os.mkdir(self.path('d'))
        self.write(os.path.join('d', 'conf'), b'x', 0o644)
        args = dict(dest=self.path('d'), _original_basename='conf', recurse=False, state='file', mode='0600')
        res = self.ok('file', **args)
        self.assertEqual((res['changed'], res['path'], res['mode']), (True, self.path('d', 'conf'), '0600'))
        self.assertFalse(self.ok('file', **args)['changed'])

    def test_file_directory_and_absent(self):
        d = self.path('a', 'b')
        res = self.ok('file', path=d, state='directory', mode='0750')
        self.assertEqual((res['changed'], res['mode'], res['state']), (True, '0750', 'directory'))
        self.assertTrue(os.path.isdir(d))
        self.assertFalse(self.ok('file', path=d, state='directory', mode='0750')['changed'])
        self.assertTrue(self.ok('file', path=self.path('a'), state='absent')['changed'])
        self.assertFalse(os.path.exists(self.path('a')))
        self.assertFalse(self.ok('file', path=self.path('a'), state='absent')['changed'])

    def test_copy_into_missing_directories_when_dest_ends_in_a_slash(self):
        src = self.write('src', b'data')
        dest = self.path('new', 'sub') + '/'
        # Check mode: said, nothing made.
        res = self.ok('copy', **self.copy_args(src, dest, _original_basename='f', _ansible_check_mode=True))
        self.assertEqual((res['changed'], res['msg']), (True, 'dest directory %s would be created' % self.path('new', 'sub')))
        self.assertFalse(os.path.exists(self.path('new')))
        res = self.ok('copy', **self.copy_args(src, dest, _original_basename='f', directory_mode='0750', mode='0600'))
        self.assertEqual((res['changed'], res['dest'], res['mode']), (True, self.path('new', 'sub', 'f'), '0600'))
        self.assertEqual(read(self.path('new', 'sub', 'f')), b'data')
        for d in (self.path('new'), self.path('new', 'sub')):
            self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o750, d)
        # A relative path in _original_basename (a directory's file) too.
        res = self.ok('copy', **self.copy_args(src, dest, _original_basename='deeper/g'))
        self.assertEqual(read(self.path('new', 'sub', 'deeper', 'g')), b'data')
        # Without the slash, as Ansible's module: no directories made.
        self.assertIn('Destination directory %s does not exist' % self.path('none'),
                      self.failure('copy', **self.copy_args(src, self.path('none', 'f'))))

    def test_file_touch_makes_or_touches_always_changed(self):
        path = self.path('t')
        res = self.ok('file', path=path, state='touch', _ansible_check_mode=True)
        self.assertEqual((res['changed'], res['dest']), (True, path))
        self.assertFalse(os.path.exists(path))
        res = self.ok('file', path=path, state='touch', mode='0640')
        self.assertEqual((res['changed'], res['state'], res['mode'], res['size']), (True, 'file', '0640', 0))
        os.utime(path, (1, 1))
        self.assertTrue(self.ok('file', path=path, state='touch')['changed'])
        self.assertGreater(os.stat(path).st_mtime, 1)

    def test_file_link_as_ansibles_module(self):
        self.write('target', b'x', 0o644)
        link = self.path('link')
        res = self.ok('file', path=link, src='target', state='link')
        self.assertEqual((res['changed'], res['state'], res['src'], os.readlink(link)), (True, 'link', 'target', 'target'))
        self.assertFalse(self.ok('file', path=link, src='target', state='link')['changed'])
        # Mode goes to the target (follow, the default).
        self.assertTrue(self.ok('file', path=link, src='target', state='link', mode='0600')['changed'])
        self.assertEqual(stat.S_IMODE(os.stat(self.path('target')).st_mode), 0o600)
        # Pointed elsewhere: replaced.
        self.write('other', b'y')
        self.assertTrue(self.ok('file', path=link, src=self.path('other'), state='link')['changed'])
        self.assertEqual(os.readlink(link), self.path('other'))
        # A link to a directory is replaced, nothing moved into the directory.
        os.mkdir(self.path('d'))
        os.symlink('d', self.path('dlink'))
        self.assertTrue(self.ok('file', path=self.path('dlink'), src='target', state='link')['changed'])
        self.assertEqual((os.readlink(self.path('dlink')), os.listdir(self.path('d'))), ('target', []))
        self.assertIn('src file does not exist',
                      self.failure('file', path=self.path('l2'), src='missing', state='link'))
        self.assertTrue(self.ok('file', path=self.path('l2'), src='missing', state='link', force=True)['changed'])
        self.write('plain', b'z')
        self.assertIn('refusing to convert from file to symlink',
                      self.failure('file', path=self.path('plain'), src='target', state='link'))
        self.ok('file', path=self.path('plain'), src='target', state='link', force=True)
        self.assertEqual(os.readlink(self.path('plain')), 'target')
        # Check mode: nothing made.
        self.assertTrue(self.ok('file', path=self.path('l3'), src='target', state='link',
                                _ansible_check_mode=True)['changed'])
        self.assertFalse(os.path.lexists(self.path('l3')))
        # As the copy action asks for a directory's symbolic links.
        res = self.ok('file', path=link, src='target', state='link', follow=False, force=True)
        self.assertEqual((res['changed'], os.readlink(link)), (True, 'target'))

    def test_file_hard_as_ansibles_module(self):
        src = self.write('src', b'x')
        hard = self.path('hard')
        res = self.ok('file', path=hard, src=src, state='hard')
        self.assertEqual((res['changed'], res['state']), (True, 'hard'))
        self.assertEqual(os.stat(hard).st_ino, os.stat(src).st_ino)
        self.assertFalse(self.ok('file', path=hard, src=src, state='hard')['changed'])
        other = self.write('other', b'y')
        self.assertIn('different hard link exists', self.failure('file', path=hard, src=other, state='hard'))
        self.assertTrue(self.ok('file', path=hard, src=other, state='hard', force=True)['changed'])
        self.assertEqual(os.stat(hard).st_ino, os.stat(other).st_ino)
        self.assertTrue(self.ok('file', path=self.path('h3'), src=src, state='hard', _ansible_check_mode=True)['changed'])
        self.assertFalse(os.path.lexists(self.path('h3')))
        self.assertIn('src is required', self.failure('file', path=self.path('h2'), state='hard'))
        self.assertIn('src does not exist', self.failure('file', path=self.path('h2'), src=self.path('no'), state='hard'))

    def test_file_refuses_what_it_lacks(self):
        self.assertIn("option 'access_time' is not supported",
                      self.failure('file', path=self.path('t'), state='touch', access_time='preserve'))
        self.assertIn('is absent, cannot continue', self.failure('file', path=self.path('nothing'), state='file'))
        self.assertIn('diff mode is not supported', self.failure('file', path=self.dir, _diff_peek=True))

    # --- slurp --------------------------------------------------------

    def test_slurp_gives_the_bytes_in_base64(self):
        import base64
        data = os.urandom(100000)
        res = self.ok('slurp', src=self.write('f', data))
        self.assertEqual((res['encoding'], base64.b64decode(res['content'])), ('base64', data))

    def test_slurp_of_what_is_missing_says_not_found(self):
        # The fetch action looks for "not found" in the message.
        self.assertIn('file not found: %s' % self.path('none'), self.failure('slurp', src=self.path('none')))
        self.assertIn('source is a directory', self.failure('slurp', src=self.dir))

    def test_a_module_without_arguments_file_fails_in_json(self):
        p = subprocess.run([BUSYBOX, 'sh', os.path.join(MODULES, 'stat.sh')], stdout=subprocess.PIPE, check=False)
        self.assertEqual((p.returncode, json.loads(p.stdout)['failed']), (1, True))


if __name__ == '__main__':
    unittest.main()
