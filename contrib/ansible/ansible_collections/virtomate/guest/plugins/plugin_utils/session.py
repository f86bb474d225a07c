# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""``SessionRunner``: one ``virtomate session DOMAIN`` process speaking JSON
lines (``{"id", "run", "stdin", "encode"}`` in, ``{"id", "result"}`` or
``{"id", "error"}`` out), for as long as the connection object lives, with
its copies of files (``copy_to``, ``copy_from``). Only with
``use_session=always``; no Ansible import here.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading

from ansible_collections.virtomate.guest.plugins.plugin_utils.virtomate import (
    MAX_STDIN,
    RunResult,
    VirtomateError,
    error_from_json,
)

# Bytes per data line of a copy through a session.
COPY_LINE = 1024 * 1024


class _JsonLinesRunner:
    """Requests and replies as ``virtomate session``'s JSON lines.

    Requests go out one line each with a fresh id; replies may come in any
    order (the session runs programs in parallel), so replies to other ids
    wait in ``_replies`` for whoever asked. Used by one thread at a time.
    Subclasses give ``_write(bytes)``, ``_readline()`` and ``_lost(why)``.
    """

    def __init__(self, virtomate):
        self.virtomate = virtomate
        self._next_id = 1
        self._replies = {}
        self._lock = threading.Lock()

    def request(self, body):
        """Sends one request and returns its reply's ``result``."""
        with self._lock:
            rid = self._new_id()
            self._send(dict(body, id=rid))
            return self._result(rid)

    def put_file(self, in_path, out_path):
        """Copies the local IN_PATH to OUT_PATH in the guest through the
        session (``copy_to``, the data in lines after it), with its mode."""
        mode = '%o' % (os.stat(in_path).st_mode & 0o7777)
        with self._lock:
            rid = self._new_id()
            self._send({'id': rid, 'copy_to': out_path, 'mode': mode})
            try:
                with open(in_path, 'rb') as source:
                    for piece in iter(lambda: source.read(COPY_LINE), b''):
                        self._send({'id': rid, 'data': base64.b64encode(piece).decode('ascii')})
            except OSError as e:
                self._send({'id': rid, 'abort': str(e)})
                try:
                    self._result(rid)
                except VirtomateError:
                    pass
                raise VirtomateError('cannot read %s: %s' % (in_path, e), 'IoError', unreachable=False)
            self._send({'id': rid, 'end': True})
            return self._result(rid)

    def fetch_file(self, in_path, out_path):
        """Copies IN_PATH in the guest to the local OUT_PATH through the
        session (``copy_from``, the data in lines before its reply)."""
        with self._lock:
            rid = self._new_id()
            self._send({'id': rid, 'copy_from': in_path})
            try:
                with open(out_path, 'wb') as out:
                    return self._result(rid, on_data=out.write)
            except BaseException:
                try:
                    os.unlink(out_path)
                except OSError:
                    pass
                raise

    def _new_id(self):
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send(self, body):
        line = json.dumps(body, separators=(',', ':')).encode() + b'\n'
        try:
            self._write(line)
        except (BrokenPipeError, OSError, ValueError):
            raise self._lost('cannot send the request')

    def _result(self, rid, on_data=None):
        """Reads until the reply to RID comes and returns its ``result``;
        data lines of RID before it go to ON_DATA, as bytes."""
        while rid not in self._replies:
            try:
                raw = self._readline()
            except (OSError, ValueError):
                raw = b''
            if not raw:
                raise self._lost('no reply to request %d' % rid)
            try:
                reply = json.loads(raw)
            except ValueError:
                raise VirtomateError('session %s: not JSON: %r' % (self.virtomate.domain, raw[:200]), 'ProtocolError')
            if isinstance(reply, dict) and 'id' not in reply and 'type' in reply:
                # virtomate's own error before any request (an unknown
                # domain, a usage error): the session ends with it.
                raise error_from_json(reply, 'session %s' % self.virtomate.domain)
            if not isinstance(reply, dict) or 'id' not in reply:
                raise VirtomateError('session %s: a reply without id: %r' % (self.virtomate.domain, raw[:200]),
                                     'ProtocolError')
            if 'data' in reply:
                if reply['id'] == rid and on_data is not None:
                    on_data(base64.b64decode(reply['data']))
                continue
            self._replies[reply['id']] = reply
        reply = self._replies.pop(rid)
        if 'error' in reply:
            raise error_from_json(reply['error'] or {}, 'session %s' % self.virtomate.domain)
        if 'result' not in reply:
            raise VirtomateError('session %s: reply %r has neither result nor error' % (self.virtomate.domain, reply),
                                 'ProtocolError')
        return reply['result']

    def ping(self):
        return self.request({'ping': {}})

    def run(self, argv, stdin=None):
        body = {'run': list(argv), 'encode': True}
        if stdin is not None:
            if len(stdin) > MAX_STDIN:
                raise VirtomateError('input of %d bytes is over what one run can pass (%d)' % (len(stdin), MAX_STDIN),
                                     'InputTooLarge', unreachable=False)
            body['stdin'] = base64.b64encode(stdin).decode('ascii')
        return RunResult.from_json(self.request(body))


class SessionRunner(_JsonLinesRunner):
    """One ``virtomate session DOMAIN`` process of this connection's own."""

    def __init__(self, virtomate, popen=subprocess.Popen):
        super().__init__(virtomate)
        self._stderr = tempfile.TemporaryFile()
        argv = virtomate.argv(['session', virtomate.domain])
        try:
            self._proc = popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)
        except OSError as e:
            raise VirtomateError('cannot run %s: %s' % (argv[0], e), 'IoError')

    def _write(self, line):
        self._proc.stdin.write(line)
        self._proc.stdin.flush()

    def _readline(self):
        return self._proc.stdout.readline()

    def _lost(self, why):
        self._stderr.seek(0)
        err = self._stderr.read().decode('utf-8', 'replace').strip()
        rc = self._proc.poll()
        detail = '; '.join(x for x in (why, 'exit status %s' % rc if rc is not None else '', err) if x)
        return VirtomateError('session %s: %s ended: %s' % (self.virtomate.domain, self.virtomate.where(), detail),
                              'AgentDisconnected')

    def close(self, timeout=10):
        """EOF on stdin: the session finishes what is in flight and exits 0."""
        proc = self._proc
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._stderr.close()
