#!/usr/bin/env python3
"""A minimal CQL client (native protocol v4, standard library only) for scripts/services.sh.

    scripts/cql.py [-c CONSISTENCY] HOST PORT "SELECT ..."   prints one line per row, columns separated by tabs

Enough for health checks of the local Cassandra nodes (system tables, system_views.gossip_info): no
authentication, no paging; consistency ONE unless -c names another (QUORUM, ALL, LOCAL_QUORUM, ...). Collections print comma-separated, nulls as "null", unknown
types as hex. Exit 0 on a result, 1 on a server error (message on stderr), 2 on a connection failure.
"""
import socket
import struct
import sys
import uuid
import ipaddress

OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE, OP_QUERY, OP_RESULT = 0x00, 0x01, 0x02, 0x03, 0x07, 0x08


class Reader:
    def __init__(self, data):
        self.d, self.i = data, 0

    def take(self, n):
        b = self.d[self.i:self.i + n]
        if len(b) != n:
            raise ValueError("short frame")
        self.i += n
        return b

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8", "replace")

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        tid = self.short()
        if tid == 0x0000:
            return ("custom", self.string())
        if tid in (0x20, 0x22):  # list, set
            return (tid, self.option())
        if tid == 0x21:  # map
            return (tid, self.option(), self.option())
        if tid == 0x30:  # udt: keyspace, name, n * (field name, type)
            self.string()
            self.string()
            return (tid, [(self.string(), self.option()) for _ in range(self.short())])
        if tid == 0x31:  # tuple
            return (tid, [self.option() for _ in range(self.short())])
        return (tid,)


def decode(t, b):
    if b is None:
        return "null"
    tid = t[0]
    if tid in (0x01, 0x0D):  # ascii, varchar
        return b.decode("utf-8", "replace")
    if tid in (0x02, 0x05, 0x09, 0x13, 0x14, 0x0E):  # bigint, counter, int, smallint, tinyint, varint
        return str(int.from_bytes(b, "big", signed=True))
    if tid == 0x0B:  # timestamp (ms)
        return str(int.from_bytes(b, "big", signed=True))
    if tid == 0x04:
        return "true" if b != b"\x00" else "false"
    if tid == 0x07:
        return repr(struct.unpack(">d", b)[0])
    if tid == 0x08:
        return repr(struct.unpack(">f", b)[0])
    if tid in (0x0C, 0x0F):
        return str(uuid.UUID(bytes=b))
    if tid == 0x10:
        return str(ipaddress.ip_address(b))
    if tid in (0x20, 0x22):
        r = Reader(b)
        return ",".join(decode(t[1], r.bytes()) for _ in range(r.int()))
    if tid == 0x21:
        r = Reader(b)
        return ",".join(decode(t[1], r.bytes()) + ":" + decode(t[2], r.bytes()) for _ in range(r.int()))
    return "0x" + b.hex()


def frame(opcode, body, stream=1):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def read_frame(sock):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed")
            buf += chunk
        return buf

    _ver, flags, _stream, opcode, length = struct.unpack(">BBhBi", exact(9))
    body = exact(length)
    r = Reader(body)
    if flags & 0x02:  # tracing id
        r.take(16)
    if flags & 0x08:  # warnings: [string list]
        for _ in range(r.short()):
            sys.stderr.write("cql.py: warning: %s\n" % r.string())
    if flags & 0x04:  # custom payload: [bytes map]
        for _ in range(r.short()):
            r.string()
            r.bytes()
    return opcode, body[r.i:]


def string_map(m):
    out = struct.pack(">H", len(m))
    for k, v in m.items():
        for s in (k, v):
            e = s.encode()
            out += struct.pack(">H", len(e)) + e
    return out


CONSISTENCY = {"ANY": 0, "ONE": 1, "TWO": 2, "THREE": 3, "QUORUM": 4, "ALL": 5, "LOCAL_QUORUM": 6,
               "EACH_QUORUM": 7, "SERIAL": 8, "LOCAL_SERIAL": 9, "LOCAL_ONE": 10}


def main():
    args = sys.argv[1:]
    consistency = "ONE"
    if len(args) >= 2 and args[0] == "-c":
        consistency = args[1].upper()
        args = args[2:]
    if len(args) != 3 or consistency not in CONSISTENCY:
        sys.stderr.write(__doc__)
        return 2
    host, port, query = args[0], int(args[1]), args[2]
    try:
        sock = socket.create_connection((host, port), timeout=5)
        sock.settimeout(20)  # longer than the server's own request timeouts, so they arrive as errors
        sock.sendall(frame(OP_STARTUP, string_map({"CQL_VERSION": "3.0.0"})))
        op, body = read_frame(sock)
        if op == OP_AUTHENTICATE:
            sys.stderr.write("cql.py: the server wants authentication (not supported here)\n")
            return 1
        if op != OP_READY:
            sys.stderr.write("cql.py: unexpected reply to STARTUP (opcode %d)\n" % op)
            return 1
        q = query.encode()
        sock.sendall(frame(OP_QUERY, struct.pack(">i", len(q)) + q + struct.pack(">HB", CONSISTENCY[consistency], 0)))
        op, body = read_frame(sock)
    except (OSError, ConnectionError, ValueError) as e:
        sys.stderr.write("cql.py: %s:%d: %s\n" % (host, port, e))
        return 2
    r = Reader(body)
    if op == OP_ERROR:
        code = r.int()
        sys.stderr.write("cql.py: error 0x%04x: %s\n" % (code, r.string()))
        return 1
    if op != OP_RESULT:
        sys.stderr.write("cql.py: unexpected opcode %d\n" % op)
        return 1
    if r.int() != 0x0002:  # not Rows (void, schema change, ...)
        return 0
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:
        r.bytes()  # paging state
    types = []
    if not flags & 0x0004:
        if flags & 0x0001:
            r.string()
            r.string()
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string()
                r.string()
            r.string()  # column name
            types.append(r.option())
    for _ in range(r.int()):
        print("\t".join(decode(types[c] if types else (0x03,), r.bytes()) for c in range(ncols)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
