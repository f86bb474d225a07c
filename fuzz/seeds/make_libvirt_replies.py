#!/usr/bin/env python3
"""Writes the seeds of the libvirt_replies fuzz target into
fuzz/seeds/libvirt_replies/ (run from anywhere; the files are committed).

Input format (see fuzz/fuzz_targets/libvirt_replies.rs): a mode byte, then
for an odd mode chunks of SEL, a big-endian 16-bit length and the payload,
each sent as the (header-built) reply to the client's latest call when it
waits; for an even mode the daemon's raw output.

The client calls, in order: auth-list, connect-open, lookup("d"),
the agent command, guest-exec-status as LibvirtAgent (agent command), the
polls of wait_for_exit (agent commands until one says exited),
query-status as LibvirtMonitor (monitor command), lib-version, close.
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libvirt_replies")

OK, ERROR = 0x00, 0x01
STALE, PING, RAW = 0x04, 0x18, 0x20

REMOTE, QEMU = 0x20008086, 0x20008087


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return u32(len(b)) + b + b"\0" * (-len(b) % 4)


def optional(s):
    return u32(0) if s is None else u32(1) + string(s)


def chunk(sel, payload=b""):
    return bytes([sel]) + struct.pack(">H", len(payload)) + payload


def packet(program, procedure, serial, payload=b"", status=0, kind=1):
    body = u32(program) + u32(1) + u32(procedure) + u32(kind) + u32(serial) + u32(status) + payload
    return u32(4 + len(body)) + body


AUTH_NONE = u32(1) + u32(0)  # one type: none
DOMAIN = string("d") + bytes(range(16)) + u32(1)  # name, uuid, id
AGENT_REPLY = optional('{"return":{}}')
RUNNING = optional('{"return":{"exited":false},"id":2}')
EXITED = optional('{"return":{"exited":true,"exitcode":0,"out-data":"aGk="},"id":3}')
QUERY_STATUS = string('{"return":{"status":"running","singlestep":false,"running":true},"id":"libvirt-9"}')
QMP_ERROR = string('{"id":"libvirt-9","error":{"class":"CommandNotFound","desc":"no"}}')
VERSION = struct.pack(">Q", 9_000_000)


def remote_error(code, domain, message):
    # Code, domain, message; the rest (level, arguments) as libvirtd sends it.
    return (u32(code) + u32(domain) + optional(message) + u32(2) + u32(0)
            + optional(None) + optional(None) + optional(None) + u32(-1) + u32(-1) + u32(0))


SEEDS = {
    # A whole session, every reply well-formed.
    "session": b"\x01" + chunk(OK, AUTH_NONE) + chunk(OK) + chunk(OK, DOMAIN)
    + chunk(OK, AGENT_REPLY) + chunk(OK, RUNNING) + chunk(OK, EXITED)
    + chunk(OK, QUERY_STATUS) + chunk(OK, VERSION) + chunk(OK),
    # The agent's refusal as libvirt wraps it, then QEMU's refusal.
    "refusals": b"\x01" + chunk(OK, AUTH_NONE) + chunk(OK) + chunk(OK, DOMAIN)
    + chunk(OK, AGENT_REPLY)
    + chunk(ERROR, remote_error(1, 10, "internal error: unable to execute QEMU agent command "
                                "'guest-exec-status': Invalid parameter 'pid'"))
    + chunk(OK, EXITED) + chunk(OK, QMP_ERROR) + chunk(OK, VERSION) + chunk(OK),
    # No such domain; the agent command then fails too (agent unresponsive).
    "error_replies": b"\x01" + chunk(OK, AUTH_NONE) + chunk(OK)
    + chunk(ERROR, remote_error(42, 10, "Domain not found: no domain with matching name 'd'"))
    + chunk(ERROR, remote_error(86, 10, "Guest agent is not responding"))
    + chunk(OK, VERSION) + chunk(OK),
    # A ping and a stale reply before the agent's reply, which is null.
    "ping_and_stale": b"\x01" + chunk(OK, AUTH_NONE) + chunk(OK) + chunk(OK, DOMAIN)
    + chunk(PING) + chunk(STALE, AGENT_REPLY) + chunk(OK, optional(None))
    + chunk(OK, VERSION) + chunk(OK),
    # A reply over the bound (1024 bytes), dropped; the next call goes on.
    "over_long": b"\x01" + chunk(OK, AUTH_NONE) + chunk(OK) + chunk(OK, DOMAIN)
    + chunk(OK, optional("x" * 2000)) + chunk(OK, VERSION) + chunk(OK),
    # Half a reply sent raw, then the daemon hangs up.
    "truncated_scripted": b"\x01" + chunk(OK, AUTH_NONE) + chunk(RAW, packet(REMOTE, 1, 1)[:13]),
    # The whole session as raw output (serials count from 0).
    "raw_session": b"\x00" + packet(REMOTE, 66, 0, AUTH_NONE) + packet(REMOTE, 1, 1)
    + packet(REMOTE, 23, 2, DOMAIN) + packet(QEMU, 3, 3, AGENT_REPLY)
    + packet(REMOTE, 157, 4, VERSION) + packet(REMOTE, 2, 5),
    # The handshake's replies as raw output, the second cut short.
    "raw_truncated": b"\x00" + packet(REMOTE, 66, 0, AUTH_NONE) + packet(REMOTE, 1, 1)[:20],
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
