#!/usr/bin/env python3
"""Memory per idle client connection: Sluicegate against nginx, in the same run.

For each protocol (plain HTTP/1.1, HTTP/1.1 over TLS, HTTP/2 over TLS, and cleartext
HTTP/2 with prior knowledge) and each server
(the gateway, then nginx), it starts the server with one worker in front of a local origin,
opens N client connections that each send one request, read the whole response and then stay
open without a word, waits for the server to settle and reads its resident memory. The figure
is (RSS with N idle connections - RSS before them) / N, in bytes, for the processes that hold
the connections (the gateway's one process; nginx's worker).

    python3 bench/idle-memory.py                     # 15,000 connections, every protocol
    python3 bench/idle-memory.py -n 5000 --modes h2  # fewer, one protocol

The connection count is bounded by the descriptor limits: the client and each server hold N
descriptors each, so N must stay under the hard RLIMIT_NOFILE (`ulimit -Hn`). Everything runs on
loopback, on ports the OS picks, in a temporary directory; every process started here is
stopped by its PID. Needs nginx and openssl (Debian packages) and a release build of the
gateway (`cargo build --release`). Standard library only.
"""

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("http1", "tls", "h2", "h2c")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout} s")


def children(pid):
    """The PIDs of pid's direct children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def rss_bytes(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class Server:
    """A process in its own session, stopped (group-wide) by its PID."""

    def __init__(self, name, argv, port, cwd):
        self.name = name
        self.port = port
        self.log = open(os.path.join(cwd, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(port, self.proc, name)

    def holders(self):
        """The processes that hold client connections."""
        workers = children(self.proc.pid)
        return workers if workers else [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


NGINX_COMMON = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections {nofile}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    http2_idle_timeout 600s;
    {body}
}}
"""


def nginx_conf(dir, name, body):
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    path = os.path.join(dir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(NGINX_COMMON.format(dir=dir, name=name, nofile=nofile, body=body))
    return path


def start_origin(dir):
    port = free_port()
    conf = nginx_conf(
        dir,
        "origin",
        f"server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 'ok'; }} }}",
    )
    return Server("origin", ["nginx", "-p", dir, "-c", conf], port, dir)


def start_nginx(dir, mode, origin_port, cert, key):
    port = free_port()
    listen = {
        "http1": f"listen 127.0.0.1:{port} backlog=4096;",
        "tls": f"listen 127.0.0.1:{port} ssl backlog=4096;",
        "h2": f"listen 127.0.0.1:{port} ssl http2 backlog=4096;",
        "h2c": f"listen 127.0.0.1:{port} http2 backlog=4096;",
    }[mode]
    body = f"""
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 128; }}
    server {{
        {listen}
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = nginx_conf(dir, f"nginx-{mode}", body)
    return Server(f"nginx-{mode}", ["nginx", "-p", dir, "-c", conf], port, dir)


def start_gateway(dir, binary, mode, origin_port, cert, key):
    port = free_port()
    tls = f"""
    tls:
      cert_file: {cert}
      key_file: {key}""" if mode in ("tls", "h2") else ""
    conf = os.path.join(dir, f"gateway-{mode}.yaml")
    with open(conf, "w") as f:
        f.write(
            f"""workers: 1
listeners:
  - address: 127.0.0.1:{port}
    http2: {"true" if mode in ("h2", "h2c") else "false"}
    client_header_timeout_ms: 600000{tls}
admin:
  enabled: false
access_log:
  target: off
upstreams:
  - name: origin
    targets: ["127.0.0.1:{origin_port}"]
    pool: {{max_idle_per_target: 128}}
routes:
  - name: all
    upstream: origin
"""
        )
    return Server(f"gateway-{mode}", [binary, "run", "-c", conf], port, dir)


def client_tls(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def http1_once(reader, writer):
    writer.write(REQUEST)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


# HPACK (RFC 7541): :method GET, :scheme https, :path / from the static table, and
# :authority as a literal with the static name (index 1), without indexing. (h2c sends
# `:scheme https` too: both servers only pass it on.)
H2_HEADERS = b"\x82\x87\x84\x01\x09localhost"


async def h2_once(reader, writer, stream=1):
    first = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) if stream == 1 else b""
    writer.write(first + h2_frame(1, 0x5, stream, H2_HEADERS))
    await writer.drain()
    while True:
        header = await reader.readexactly(9)
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        got = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        await reader.readexactly(length)
        if kind == 4 and not flags & 0x1:
            writer.write(h2_frame(4, 0x1, 0))
            await writer.drain()
        elif kind == 7:
            raise RuntimeError("GOAWAY from the server")
        elif got == stream and kind in (0, 1) and flags & 0x1:
            return


async def open_idle(port, mode, n, concurrency=200):
    """Opens n connections, one request each; returns their writers (kept open)."""
    writers = []
    sem = asyncio.Semaphore(concurrency)
    ctx = {"tls": client_tls("http/1.1"), "h2": client_tls("h2")}.get(mode)

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
            )
            if mode == "h2":
                proto = writer.get_extra_info("ssl_object").selected_alpn_protocol()
                if proto != "h2":
                    raise RuntimeError(f"ALPN chose {proto!r}, not h2")
            if mode in ("h2", "h2c"):
                await h2_once(reader, writer)
            else:
                await http1_once(reader, writer)
            writers.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


async def ask_again(conns, mode, concurrency=200):
    """A second request on every idle connection: the count that failed."""
    sem = asyncio.Semaphore(concurrency)

    async def one(reader, writer):
        async with sem:
            try:
                if mode in ("h2", "h2c"):
                    await asyncio.wait_for(h2_once(reader, writer, stream=3), 10)
                else:
                    await asyncio.wait_for(http1_once(reader, writer), 10)
                return 0
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError):
                return 1

    return sum(await asyncio.gather(*(one(r, w) for r, w in conns)))


async def close_all(conns):
    for _, w in conns:
        w.close()
    for _, w in conns:
        try:
            await w.wait_closed()
        except OSError:
            pass


def measure(server, mode, n, settle):
    async def run():
        # Warm-up: the allocator's and the server's one-time state is not per connection.
        await close_all(await open_idle(server.port, mode, 200))
        await asyncio.sleep(settle)
        before = rss_bytes(server.holders())
        writers = await open_idle(server.port, mode, n)
        await asyncio.sleep(settle)
        after = rss_bytes(server.holders())
        if server.proc.poll() is not None:
            sys.exit(f"{server.name} died during the run")
        failed = await ask_again(writers, mode)
        if failed:
            sys.exit(f"{server.name}: {failed} of {n} idle connections did not answer a second request")
        await close_all(writers)
        return before, after

    return asyncio.run(run())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=15000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/sluicegate"))
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            sys.exit(f"unknown mode {m!r}; expected one of {', '.join(MODES)}")
    for program in ("nginx", "openssl"):
        if not shutil.which(program) and not os.path.exists(f"/usr/sbin/{program}"):
            sys.exit(f"`{program}` is not installed (apt-get install {program})")
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} is missing: run `cargo build --release` first")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 500 > hard:
        sys.exit(f"{args.connections} connections need more descriptors than the limit ({hard})")
    os.environ["PATH"] += os.pathsep + "/usr/sbin"

    rows = []
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as dir:
        cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )
        origin = start_origin(dir)
        try:
            for mode in modes:
                for name, start in (
                    ("sluicegate", lambda: start_gateway(dir, args.binary, mode, origin.port, cert, key)),
                    ("nginx", lambda: start_nginx(dir, mode, origin.port, cert, key)),
                ):
                    server = start()
                    try:
                        before, after = measure(server, mode, args.connections, args.settle)
                    finally:
                        server.stop()
                    per = (after - before) / args.connections
                    rows.append((mode, name, before, after, per))
                    print(f"{mode:6} {name:10} RSS {before / 2**20:7.1f} -> {after / 2**20:7.1f} MiB"
                          f"  {per:8.0f} B per idle connection", flush=True)
        finally:
            origin.stop()

    print(f"\n{args.connections} idle connections, one request each; bytes of RSS per connection")
    print(f"{'protocol':8} {'sluicegate':>11} {'nginx':>9} {'ratio':>7}")
    by = {(m, n): per for m, n, _, _, per in rows}
    for mode in modes:
        ours, theirs = by.get((mode, "sluicegate")), by.get((mode, "nginx"))
        ratio = f"{ours / theirs:6.2f}x" if theirs and theirs > 0 else "   n/a"
        print(f"{mode:8} {ours:11.0f} {theirs:9.0f} {ratio}")


if __name__ == "__main__":
    main()
