#!/usr/bin/env python3
"""A stand-in for `virtomate session DOMAIN` (issue 13's JSON lines), for the
unit tests while the real one is not there: it runs each request's program
on this host, in a thread, and replies when it ends, so replies to
pipelined requests come in the order the programs end.

Usage: fake_session.py [virtomate options...] session [--idle S] DOMAIN
  DOMAIN "missing" ends at once with a NotFoundError on stdout, as
  `virtomate session` does for a domain that does not exist.
  A program named "die-now" makes the session exit without replying,
  as when the VM and the session go away mid-request.
  Copies (`copy_to` with data lines, `copy_from`) work on this host's
  files, unless FAKE_SESSION_NO_COPIES is set: then they are refused as
  an older virtomate refuses them (UsageError). A copy_to given up
  (`abort`) is reported in ABORTED_LOG when that is set.
"""

import base64
import json
import os
import subprocess
import sys
import threading

lock = threading.Lock()


def reply(obj):
    with lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True, separators=(',', ':')) + '\n')
        sys.stdout.flush()


def run(rid, req):
    argv = req['run']
    stdin = base64.b64decode(req['stdin']) if req.get('stdin') is not None else b''
    try:
        p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except OSError as e:
        reply({'id': rid, 'error': {'type': 'AgentCommandError',
                                    'message': "unable to execute QEMU agent command 'guest-exec': %s" % e}})
        return

    def enc(b):
        if not b:
            return None
        return base64.b64encode(b).decode() if req.get('encode') else b.decode()

    reply({'id': rid, 'result': {
        'exit_code': p.returncode if p.returncode >= 0 else None,
        'signal': -p.returncode if p.returncode < 0 else None,
        'stdout': enc(p.stdout), 'stderr': enc(p.stderr),
        'stdout_truncated': False, 'stderr_truncated': False}})


def copy(rid, req, copies):
    key = json.dumps(rid)
    if 'copy_from' in req:
        try:
            with open(req['copy_from'], 'rb') as f:
                data = f.read()
        except OSError as e:
            reply({'id': rid, 'error': {'type': 'PathError', 'message': str(e)}})
            return
        for i in range(0, len(data), 1 << 20):
            reply({'id': rid, 'data': base64.b64encode(data[i:i + (1 << 20)]).decode()})
        reply({'id': rid, 'result': {'bytes': len(data), 'seconds': 0.0}})
        return
    if 'copy_to' in req:
        copies[key] = [req['copy_to'], int(req.get('mode', '600'), 8), bytearray()]
        return
    if key not in copies:
        reply({'id': rid, 'error': {'type': 'UsageError', 'message': 'no copy_to with the id %s waits for data' % key}})
        return
    if 'abort' in req:
        del copies[key]
        if os.environ.get('ABORTED_LOG'):
            with open(os.environ['ABORTED_LOG'], 'a') as log:
                log.write('%s %s\n' % (key, req['abort']))
        reply({'id': rid, 'error': {'type': 'IoError', 'message': 'the client gave the copy up: %s' % req['abort']}})
        return
    copies[key][2] += base64.b64decode(req.get('data', ''))
    if req.get('end'):
        path, mode, data = copies.pop(key)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)
        reply({'id': rid, 'result': {'bytes': len(data), 'seconds': 0.0}})


def main():
    args = sys.argv[1:]
    domain = args[-1]
    if domain == 'missing':
        reply({'message': "Domain '%s' does not exist" % domain, 'type': 'NotFoundError'})
        sys.exit(1)
    threads = []
    copies = {}  # id as JSON -> [path, mode, bytearray]
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            reply({'id': None, 'error': {'type': 'ProtocolError', 'message': 'not JSON'}})
            continue
        rid = req.get('id') if isinstance(req, dict) else None
        if isinstance(req, dict) and 'ping' in req:
            reply({'id': rid, 'result': {}})
        elif isinstance(req, dict) and os.environ.get('FAKE_SESSION_NO_COPIES') is None and (
                'copy_to' in req or 'copy_from' in req or 'data' in req or 'end' in req or 'abort' in req):
            copy(rid, req, copies)
        elif isinstance(req, dict) and isinstance(req.get('run'), list):
            if req['run'][:1] == ['die-now']:
                sys.stderr.write('fake session: the agent went away\n')
                sys.exit(1)
            t = threading.Thread(target=run, args=(rid, req))
            t.start()
            threads.append(t)
        else:
            reply({'id': rid, 'error': {'type': 'UsageError', 'message': 'request not understood'}})
    for t in threads:
        t.join()


if __name__ == '__main__':
    main()
