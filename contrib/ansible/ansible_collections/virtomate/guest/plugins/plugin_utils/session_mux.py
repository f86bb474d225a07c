# Copyright (c) virtomate developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

"""One ``virtomate session`` per host for a whole play, shared by tasks.

Ansible makes a new connection for each task, in a forked worker that ends
with the task, so a session started by a task would die with it. This
helper outlives the workers, as SSH's ControlPersist master does: the
first task that needs it starts it, detached (its own session, no
terminal); it runs one ``virtomate session DOMAIN`` (or ``ssh HOST
virtomate session DOMAIN``) and listens on a UNIX socket in a directory
only its user can enter. Each connection of a task is a client:

- on connecting, a client reads one line, ``{"hello": {"pid", "session_pid", ...}}``;
  a connection closed before it (the helper is going away) is no harm:
  nothing was sent, and the client starts a new helper;
- then it speaks the session's own JSON lines. The helper gives each
  request a fresh id of its own before passing it on, and each reply its
  client's id back, so that tasks of several workers share one session.
  A copy's data lines go under the id its request got: those a client
  sends after a ``copy_to`` (until the one with ``"end": true``), and
  those the session sends before a ``copy_from``'s reply;
- a reply the session cannot route (its own error before any request, such
  as an unknown domain) ends the session: every request in flight and every
  later one gets it as its error.

The helper exits when nobody has used it for PERSIST seconds (no client
connected, no request in flight), when the session ends, or when its socket
is removed or replaced (``meta: reset_connection`` removes it). It removes
the socket first, so that the next task starts a new helper.

Only the standard library: the plugin runs it as a script with Ansible's
Python, ``python3 session_mux.py [--fd FD] [--hello JSON] SOCKET PERSIST --
ARGV...``; FD is one end of a socket pair, the connection of the task that
started it, served as the first client (so that the starter sees even a
session that ends at once); JSON, an object, goes into every hello (the
plugin puts the binary's command list there, so that later tasks need not
run ``virtomate --help`` again). It forks once more and its first process exits, so
that the starter has no child left behind. It writes nothing to its stdout
and stderr.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

# How often the main loop looks at the clock, the session and the socket.
TICK = 0.5
# The session's stderr kept for the error of a session that ends.
STDERR_TAIL = 4096


def _dumps(obj):
    return json.dumps(obj, separators=(',', ':')).encode('utf-8') + b'\n'


def peer_uid(sock):
    """The uid of the process at the other end of SOCK, or None if unknown."""
    opt = getattr(socket, 'SO_PEERCRED', None)
    if opt is None:
        return None
    pid_uid_gid = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize('3i'))
    return struct.unpack('3i', pid_uid_gid)[1]


class Client:
    """One connection of a task."""

    def __init__(self, mux, sock):
        self.mux = mux
        self.sock = sock
        self._send_lock = threading.Lock()
        self.closed = False

    def send(self, obj):
        with self._send_lock:
            if self.closed:
                return
            try:
                self.sock.sendall(_dumps(obj))
            except OSError:
                self.closed = True

    def serve(self):
        """Reads the client's request lines until it goes away."""
        try:
            reader = self.sock.makefile('rb')
            for line in reader:
                self.mux.forward(self, line)
        except OSError:
            pass
        finally:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
            self.mux.client_gone(self)


class Mux:
    """The helper: a session, a listening socket, clients."""

    def __init__(self, path, persist, argv, hello=None):
        self.hello = dict(hello or {})
        self.path = path
        self.persist = persist
        self.argv = argv
        self.lock = threading.Lock()  # the tables below
        # The session's stdin, so that lines of several clients never mix;
        # apart from `lock`, so that replies are routed while a client's
        # line waits for the session to read (a copy's data, say).
        self.write_lock = threading.Lock()
        self.clients = set()
        self.pending = {}  # the session's id -> (client, the client's id)
        self.open_copies = {}  # (client, the client's id as JSON) -> the session's id of a copy_to
        self.next_id = 1
        self.last_used = time.monotonic()
        self.fatal = None  # the error every request gets once the session ended
        self.stderr_tail = b''
        self.listener = None
        self.inode = None
        self.proc = None

    # --- the session ------------------------------------------------------

    def start_session(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        for target in (self._read_replies, self._read_stderr):
            threading.Thread(target=target, daemon=True).start()

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read(4096), b''):
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL:]

    def _read_replies(self):
        own_error = None
        for line in self.proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if not isinstance(reply, dict):
                continue
            if 'id' not in reply:
                if 'type' in reply:
                    # virtomate's own error, before or instead of any reply:
                    # the session ends with it.
                    own_error = {'type': reply.get('type'), 'message': reply.get('message')}
                continue
            with self.lock:
                if 'data' in reply:
                    # A copy_from's data line: its reply comes after.
                    route = self.pending.get(reply['id'])
                else:
                    route = self.pending.pop(reply['id'], None)
                self.last_used = time.monotonic()
            if route is not None:
                client, client_id = route
                reply['id'] = client_id
                client.send(reply)
        rc = self.proc.wait()
        if own_error is None:
            detail = self.stderr_tail.decode('utf-8', 'replace').strip().splitlines()[-3:]
            own_error = {'type': 'AgentDisconnected',
                         'message': 'virtomate session ended (exit status %s)%s'
                                    % (rc, ': ' + ' '.join(detail) if detail else '')}
        with self.lock:
            self.fatal = own_error
            left = list(self.pending.values())
            self.pending.clear()
        self.remove_socket()
        for client, client_id in left:
            client.send({'id': client_id, 'error': own_error})

    def forward(self, client, line):
        """Passes one request line of CLIENT on, under an id of the helper's."""
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            client.send({'id': None, 'error': {'type': 'UsageError', 'message': 'a request is a JSON object'}})
            return
        client_id = request.get('id')
        copy_key = (client, json.dumps(client_id, sort_keys=True))
        is_data = any(key in request for key in ('data', 'end', 'abort')) and not any(
            key in request for key in ('run', 'ping', 'copy_to', 'copy_from'))
        with self.lock:
            self.last_used = time.monotonic()
            fatal = self.fatal
            if fatal is None and is_data:
                sid = self.open_copies.get(copy_key)
                if sid is None:
                    message = 'no copy_to with the id %s waits for data' % json.dumps(client_id)
                    client.send({'id': client_id, 'error': {'type': 'UsageError', 'message': message}})
                    return
                if request.get('end') is True or 'abort' in request:
                    del self.open_copies[copy_key]
            elif fatal is None:
                sid = self.next_id
                self.next_id += 1
                self.pending[sid] = (client, client_id)
                if 'copy_to' in request and 'data' not in request:
                    self.open_copies[copy_key] = sid
        if fatal is not None:
            client.send({'id': client_id, 'error': fatal})
            return
        request['id'] = sid
        self.write(request)

    def write(self, request):
        """Writes one line to the session. A session that ended (or is
        ending: an unknown domain ends it at once) leaves the request
        pending, and it gets the session's own last word when its end is
        read."""
        with self.write_lock:
            try:
                self.proc.stdin.write(_dumps(request))
            except (OSError, ValueError):
                pass

    def close_session(self, timeout=10):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # --- clients ----------------------------------------------------------

    def add_client(self, sock):
        uid = peer_uid(sock)
        if uid is not None and uid != os.getuid():
            sock.close()
            return
        client = Client(self, sock)
        with self.lock:
            self.clients.add(client)
            self.last_used = time.monotonic()
        client.send({'hello': dict(self.hello, pid=os.getpid(), session_pid=self.proc.pid)})
        threading.Thread(target=client.serve, daemon=True).start()

    def client_gone(self, client):
        with self.lock:
            self.clients.discard(client)
            self.last_used = time.monotonic()
            # Its copies into the guest would wait for data for ever, and
            # hold the session meanwhile: they are given up.
            abandoned = [self.open_copies.pop(key) for key in list(self.open_copies) if key[0] is client]
        for sid in abandoned:
            self.write({'id': sid, 'abort': 'the task went away'})

    # --- the socket -------------------------------------------------------

    def listen(self):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(64)
        listener.settimeout(TICK)
        self.listener = listener
        self.inode = os.lstat(self.path).st_ino

    def socket_is_ours(self):
        try:
            return os.lstat(self.path).st_ino == self.inode
        except OSError:
            return False

    def remove_socket(self):
        """Removes the socket if it is still ours: no new client comes."""
        with self.lock:
            if self.inode is not None and self.socket_is_ours():
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            self.inode = None

    # --- the main loop ----------------------------------------------------

    def idle(self):
        with self.lock:
            return not self.clients and not self.pending and time.monotonic() - self.last_used >= self.persist

    def run(self):
        while True:
            try:
                sock, _addr = self.listener.accept()
            except socket.timeout:
                sock = None
            except OSError as e:
                if e.errno != errno.EINTR:
                    raise
                sock = None
            if sock is not None:
                sock.settimeout(None)
                if self.fatal is not None:
                    sock.close()  # no hello: the client starts a new helper
                else:
                    self.add_client(sock)
                continue
            if self.fatal is not None:
                # The session ended: serve the clients still here its error.
                with self.lock:
                    if not self.clients:
                        break
                continue
            if not self.socket_is_ours():
                self.inode = None
                with self.lock:
                    if not self.clients and not self.pending:
                        break
                continue
            if self.idle():
                break
        self.remove_socket()
        self.listener.close()
        if self.fatal is None:
            self.close_session()


def main(args):
    first = None
    hello = {}
    while args[:1] in (['--fd'], ['--hello']):
        if args[0] == '--fd':
            first = socket.socket(fileno=int(args[1]))
        else:
            hello = json.loads(args[1])
        args = args[2:]
    if len(args) < 4 or args[2] != '--':
        sys.stderr.write('usage: session_mux.py [--fd FD] [--hello JSON] SOCKET PERSIST_SECONDS -- ARGV...\n')
        return 2
    # Detached: the starter waits for this process, which ends here; the
    # helper goes on in its child, which init (or a subreaper) reaps.
    if os.fork():
        os._exit(0)
    mux = Mux(args[0], float(args[1]), args[3:], hello)
    try:
        mux.start_session()
        mux.listen()
    except OSError as e:
        if first is not None:
            first.sendall(_dumps({'error': {'type': 'IoError', 'message': 'session helper for %s: %s'
                                            % (args[0], e)}}))
        return 1
    if first is not None:
        mux.add_client(first)
    mux.run()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
