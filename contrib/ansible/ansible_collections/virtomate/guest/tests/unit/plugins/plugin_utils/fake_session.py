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
"""

import base64
import json
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


def main():
    args = sys.argv[1:]
    domain = args[-1]
    if domain == 'missing':
        reply({'message': "Domain '%s' does not exist" % domain, 'type': 'NotFoundError'})
        sys.exit(1)
    threads = []
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            reply({'id': None, 'error': {'type': 'ProtocolError', 'message': 'not JSON'}})
            continue
        rid = req.get('id') if isinstance(req, dict) else None
        if isinstance(req, dict) and 'ping' in req:
            reply({'id': rid, 'result': {}})
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
