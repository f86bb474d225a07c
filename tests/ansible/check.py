"""Checks the JSON output (ANSIBLE_STDOUT_CALLBACK=json) of the playbooks of
scripts/test-ansible.sh. Usage: check.py main|faults OUTPUT.json [key=value...]"""

import hashlib
import json
import os
import sys

kind, path = sys.argv[1], sys.argv[2]
params = dict(a.split('=', 1) for a in sys.argv[3:])
with open(path) as f:
    text = f.read()
# Warnings may precede the JSON document.
out = json.loads(text[text.index('{'):])

failures = []
checked = 0


def check(cond, what):
    global checked
    checked += 1
    if not cond:
        failures.append(what)


results = {}
for play in out['plays']:
    for task in play['tasks']:
        for host, res in task['hosts'].items():
            results[(host, task['task']['name'])] = res


def res(host, name):
    r = results.get((host, name))
    check(r is not None, '%s: no result for task %r' % (host, name))
    return r or {}


def ok(host, name):
    r = res(host, name)
    check(not r.get('failed') and not r.get('unreachable'), '%s: %s failed: %s' % (host, name, r.get('msg')))
    return r


stats = out['stats']

if kind == 'main':
    big_sha1 = params['big_sha1']
    for h in ('py1', 'py2'):
        s = stats.get(h, {})
        check(s.get('unreachable') == 0 and s.get('failures') == 0 and s.get('ignored') == 1,
              '%s: stats %s' % (h, s))
        check(ok(h, 'ping').get('ping') == 'pong', '%s: ping' % h)
        check(ok(h, 'command with stdin').get('stdout') == 'hello through stdin', '%s: stdin' % h)
        check(ok(h, 'shell with a pipeline').get('stdout') == '2', '%s: pipeline' % h)
        r = ok(h, 'copy a 5 MiB file')
        check(r.get('checksum') == big_sha1 and r.get('size') == 5 * 1024 * 1024 and r.get('mode') == '0600',
              '%s: copy result %s' % (h, {k: r.get(k) for k in ('checksum', 'size', 'mode', 'msg')}))
        r = ok(h, 'copy a 1 MiB text file, gzipped')
        check(r.get('checksum') == params['text_sha1'], '%s: text copy %s' % (h, r.get('checksum')))
        r = ok(h, 'fetch it back')
        fetched = os.path.join(params['fetch_dir'], h, 'root', 'big.bin')
        check(r.get('checksum') == big_sha1 and os.path.exists(fetched), '%s: fetch %s' % (h, r.get('msg')))
        if os.path.exists(fetched):
            with open(fetched, 'rb') as f:
                check(hashlib.sha1(f.read()).hexdigest() == big_sha1, '%s: fetched file differs' % h)
        rendered = '# written by Ansible through virtomate\nhost=%s\n' % h
        r = ok(h, 'template')
        check(r.get('changed') is True and r.get('checksum') == hashlib.sha1(rendered.encode()).hexdigest(),
              '%s: template %s' % (h, r.get('checksum')))
        check(ok(h, 'file makes a directory').get('mode') == '0750', '%s: file' % h)
        st = ok(h, 'stat the directory').get('stat', {})
        check(st.get('isdir') is True and st.get('mode') == '0750', '%s: stat %s' % (h, st))
        # Python's stat module, not the shell one (which has no pw_name).
        check(st.get('pw_name') == 'root', '%s: stat not by the Python module: %s' % (h, st))
        check(ok(h, 'become alice with sudo').get('stdout') == 'alice', '%s: become sudo' % h)
        check(ok(h, 'become alice with su, raw').get('stdout_lines') == ['alice'], '%s: become su' % h)
        r = res(h, 'a failing task')
        check(r.get('failed') is True and r.get('rc') == 3 and r.get('stderr', '').strip() == 'failing on purpose',
              '%s: failing task %s' % (h, {k: r.get(k) for k in ('failed', 'rc', 'stderr', 'msg')}))
        check(ok(h, 'the play goes on').get('stdout_lines') == ['still here'], '%s: after the failure' % h)
    s = stats.get('bb', {})
    check(s.get('unreachable') == 0 and s.get('failures') == 0 and s.get('ignored') == 2, 'bb: stats %s' % s)
    r = ok('bb', 'raw')
    check(r.get('stdout_lines') == ['raw-ok', 'LINUX'] and r.get('rc') == 0, 'bb: raw %s' % r.get('stdout_lines'))
    r = ok('bb', 'script')
    check(r.get('stdout_lines') == ['script-ok arg1', 'Linux'] and r.get('rc') == 0,
          'bb: script %s' % r.get('stdout_lines'))
    # Without Python: the shell modules.
    r = ok('bb', 'file makes a directory')
    check(r.get('mode') == '0750' and r.get('state') == 'directory', 'bb: file %s' % r)
    bb_sha1, copied = params['bb_sha1'], 'copied-%s.bin' % params['test_pass']
    r = ok('bb', 'copy a file')
    check(r.get('changed') is True and r.get('checksum') == bb_sha1 and r.get('mode') == '0640'
          and r.get('dest') == '/tmp/virtomate-bb/' + copied, 'bb: copy %s' % r)
    r = ok('bb', 'copy it again')
    check(r.get('changed') is False and r.get('checksum') == bb_sha1, 'bb: copy again %s' % r)
    r = ok('bb', 'the copy in the guest')
    check(r.get('stdout_lines') == ['%s  %s' % (bb_sha1, copied), '640'], 'bb: in the guest %s' % r.get('stdout'))
    r = ok('bb', 'copy with content')
    check(r.get('changed') is True and r.get('mode') == '0600', 'bb: content %s' % r)
    r = ok('bb', 'the content in the guest')
    check(r.get('stdout_lines') == ['written by content', '600'], 'bb: content in the guest %s' % r.get('stdout'))
    r = ok('bb', 'copy into directories that do not exist')
    check(r.get('changed') is True and r.get('checksum') == bb_sha1
          and r.get('dest') == '/tmp/virtomate-bb/new-%s/sub/bb.bin' % params['test_pass'], 'bb: copy into new %s' % r)
    check(ok('bb', 'copy a directory').get('changed') is True, 'bb: copy a directory')
    r = ok('bb', 'file touch')
    check(r.get('changed') is True and r.get('mode') == '0600', 'bb: touch %s' % r)
    check(ok('bb', 'file link').get('changed') is True, 'bb: link')
    check(ok('bb', 'file link again').get('changed') is False, 'bb: link again')
    check(ok('bb', 'file hard').get('changed') is True, 'bb: hard')
    r = ok('bb', 'the new files in the guest')
    check(r.get('stdout_lines') == [bb_sha1, '750', '750', 'one', 'two', '600', 'touched-%s' % params['test_pass'],
                                    'same-inode'], 'bb: new files in the guest %s' % r.get('stdout'))
    r = ok('bb', 'fetch the copy back')
    fetched = os.path.join(params['fetch_dir'], 'bb', 'tmp', 'virtomate-bb', copied)
    check(r.get('changed') is True and r.get('checksum') == bb_sha1, 'bb: fetch %s' % r)
    check(os.path.exists(fetched) and hashlib.sha1(open(fetched, 'rb').read()).hexdigest() == bb_sha1,
          'bb: fetched file %s differs or is missing' % fetched)
    r = res('bb', 'fetch a missing file')
    check(r.get('failed') is True and 'does not exist' in r.get('msg', ''), 'bb: fetch missing %s' % r.get('msg'))
    r = res('bb', 'copy with an option the shell modules lack')
    check(r.get('failed') is True and "option 'validate' is not supported on a guest without Python" in r.get('msg', ''),
          'bb: unsupported option %s' % r.get('msg'))
elif kind == 'faults':
    expected = {
        'agent_stopped': ('ping', ('AgentTimeout', 'AgentUnavailable')),
        'stopped_mid_play': ('long task', ('AgentDisconnected',)),
        'no_such_domain': ('ping', ('NotFoundError',)),
    }
    if 'hosts' in params:
        expected = {h: e for h, e in expected.items() if h in params['hosts'].split(',')}
    for h, (task, types) in expected.items():
        check(stats.get(h, {}).get('unreachable') == 1, '%s: stats %s' % (h, stats.get(h)))
        r = res(h, task)
        msg = r.get('msg', '')
        check(r.get('unreachable') is True and any(t in msg for t in types),
              '%s: %s: want UNREACHABLE with %s, got %s' % (h, task, '/'.join(types), msg))
        print('%s: %s' % (h, msg.splitlines()[0] if msg else r))
    if 'stopped_mid_play' in expected:
        ok('stopped_mid_play', 'reach')
else:
    sys.exit('unknown kind ' + kind)

for play in out['plays']:
    for task in play['tasks']:
        print('  %-34s %s' % (task['task']['name'], ' '.join(
            '%s=%.1fs' % (h, r.get('_duration', 0)) for h, r in sorted(task['hosts'].items()))))
for f in failures:
    print('FAIL:', f)
print('%s: %d checks, %d failed' % (kind, checked, len(failures)))
sys.exit(1 if failures else 0)
