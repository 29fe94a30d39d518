#!/usr/bin/env python3
"""Cluster mode: how fast a change reaches every node, and what applying it costs a node.

It starts a throw-away PostgreSQL (Debian's `postgresql`: initdb in a temporary directory,
a loopback port the OS picks, fsync off), runs `sluicegate migrations up`, starts three
nodes from examples/cluster.yaml and an origin in a process of its own (nginx with one
worker when installed, else a small Python server), then measures:

1. **Propagation**: N changes (default 200), each a new route created through node a's
   admin API; the time from sending the write until *every* node serves the route (a
   poller per node, GET in a loop, 200 = served). p50 / p99 / max.
2. **One change at R routes** (default 10,000): `PUT /v1/config` with R routes, then K
   single-route changes (default 20). For each, the CPU time node b (which only follows)
   spent, from its threads' schedstat, and the node's own apply duration
   (`sluicegate_cluster_last_apply_seconds`), and the CPU time of node a, which takes the
   write (it checks the candidate before committing, then applies it), with no traffic.
   Then the same number of changes again while wrk drives traffic through node b (when
   `wrk` is installed): its errors and latency against quiet runs of the same length
   before and after, and how long each change took to reach node b meanwhile. `--pin`
   puts node b, wrk and the origin on the CPUs but the first.

    python3 bench/cluster-propagation.py                   # 200 changes; 10,000 routes
    python3 bench/cluster-propagation.py -n 50 --routes 1000
    python3 bench/cluster-propagation.py --pin             # node b and wrk on CPUs of their own

Everything runs on loopback; every process started here is stopped by its PID. Needs a
release build (`cargo build --release`) and PostgreSQL (`scripts/test` installs it).
Standard library only.
"""

import argparse
import glob
import http.client
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "sluicegate")
CONFIG = os.path.join(ROOT, "examples", "cluster.yaml")
TOKEN = "bench-admin-token-0123456789abcdef"


# With --pin: the CPUs of node b and of the traffic through it (wrk, the origin).
TRAFFIC_CPUS = None


def pinned(cpus):
    """The command prefix that runs a process on `cpus` (a taskset list), if any."""
    return ["taskset", "-c", cpus] if cpus else []


def listening(port, seconds):
    """Whether something accepts connections on loopback `port` within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """initdb + postgres in `root`, as the `postgres` user when run as root."""

    def __init__(self, root):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            sys.exit("PostgreSQL is missing: run scripts/test or apt-get install postgresql")
        self.bin = bins[-1]
        self.dir = os.path.join(root, "pg")
        os.makedirs(self.dir)
        self.as_user = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run(
            self.as_user
            + [f"{self.bin}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.port = free_port()
        log = open(os.path.join(root, "postgres.log"), "w")
        self.proc = subprocess.Popen(
            self.as_user
            + [f"{self.bin}/postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log,
            stderr=log,
        )
        for _ in range(300):
            ok = subprocess.run(
                [f"{self.bin}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
            ).returncode == 0
            if ok:
                break
            time.sleep(0.1)
        subprocess.run(
            [f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "sluicegate"],
            check=True,
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/sluicegate"

    def stop(self):
        subprocess.run(
            self.as_user
            + [f"{self.bin}/pg_ctl", "stop", "-m", "fast", "-D", os.path.join(self.dir, "data")],
            stdout=subprocess.DEVNULL,
        )
        self.proc.wait(timeout=30)


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # One write: a head and a body in two would meet the client's delayed ACK.
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def log_message(self, *_):
        pass


NGINX_ORIGIN = """daemon off;
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi; scgi_temp_path scgi;
    server { listen 127.0.0.1:%d; location / { return 200 "ok"; } }
}
"""


class Origin:
    """The upstream of every route, in a process of its own so that it never competes
    with this script's pollers for the interpreter: nginx when installed (one worker),
    else this script in `--origin` mode."""

    def __init__(self, root):
        self.port = free_port()
        self.dir = os.path.join(root, "origin")
        os.makedirs(self.dir)
        log = open(os.path.join(root, "origin.log"), "w")
        nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
        if nginx:
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_ORIGIN % self.port)
            cmd = [nginx, "-e", "stderr", "-p", self.dir, "-c", conf]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--origin", str(self.port)]
        self.proc = subprocess.Popen(pinned(TRAFFIC_CPUS) + cmd, stdout=log, stderr=log)
        if not listening(self.port, 10):
            self.stop()
            sys.exit("the origin did not start; see origin.log")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def serve_origin(port):
    ThreadingHTTPServer(("127.0.0.1", port), OriginHandler).serve_forever()


class Node:
    def __init__(self, name, root, pg_url, cpus=None):
        self.name = name
        self.port = free_port()
        self.admin = free_port()
        env = dict(os.environ, PG_URL=pg_url, ADMIN_TOKEN=TOKEN, NODE_NAME=name,
                   DATA_DIR=os.path.join(root, name), PORT=str(self.port),
                   ADMIN_PORT=str(self.admin), RUST_LOG="warn")
        self.log = open(os.path.join(root, f"{name}.log"), "w")
        self.proc = subprocess.Popen(pinned(cpus) + [BINARY, "run", "-c", CONFIG], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.call("GET", "/v1/cluster")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"node {name} did not start; see its log")

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=60)
        data = None if body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"authorization": f"Bearer {TOKEN}",
                                                     "content-type": "application/json"})
        r = c.getresponse()
        out = r.status, r.read(), r.getheader("x-sluicegate-revision")
        c.close()
        return out

    def metric(self, name):
        text = self.call("GET", "/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def cpu_seconds(self):
        """CPU time of every thread, in nanoseconds from schedstat (the tick counters in
        /proc/PID/stat count in 10 ms steps)."""
        total = 0
        for task in glob.glob(f"/proc/{self.proc.pid}/task/*/schedstat"):
            try:
                with open(task) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
        return total / 1e9

    def process_cpu_seconds(self):
        """User + system time of the process, exited threads included (10 ms steps: for
        windows of seconds)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def served_at(port, path, deadline):
    """Polls `path` on `port` until 200; returns the time it first answered 200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.perf_counter() < deadline:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        if r.status == 200:
            now = time.perf_counter()
            c.close()
            return now
    c.close()
    return None


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def propagation(nodes, n):
    a = nodes[0]
    took = []
    for i in range(n):
        path = f"/p{i}/"
        results = [None] * len(nodes)
        start = time.perf_counter()
        deadline = start + 10

        def poll(k):
            results[k] = served_at(nodes[k].port, path, deadline)

        threads = [threading.Thread(target=poll, args=(k,)) for k in range(len(nodes))]
        for t in threads:
            t.start()
        status, body, _ = a.call("POST", "/v1/routes",
                                 {"name": f"p{i}", "match": {"paths": path}, "upstream": "origin"})
        if status != 201:
            sys.exit(f"write {i}: {status} {body!r}")
        for t in threads:
            t.join()
        if None in results:
            sys.exit(f"change {i} did not reach every node within 10 s")
        took.append((max(results) - start) * 1e3)
    return took


def wrk_run(port, seconds, path):
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(
        pinned(TRAFFIC_CPUS) + ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True,
    ).stdout
    stats = {"errors": 0, "non2xx": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith("99%"):
            stats["p99"] = parts[1]
        elif line.strip().startswith("50%"):
            stats["p50"] = parts[1]
        elif line.startswith("Requests/sec"):
            stats["rps"] = float(parts[1])
        elif "Non-2xx" in line:
            stats["non2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            stats["errors"] = sum(int(x.rstrip(",")) for x in parts if x.rstrip(",").isdigit())
    return stats


def many_routes(nodes, origin, routes, changes):
    a, b = nodes[0], nodes[1]
    body = {
        "upstreams": [{"name": "origin", "targets": [origin]}],
        "routes": [{"name": f"r{i}", "match": {"paths": f"/r{i}/"}, "upstream": "origin"}
                   for i in range(routes)],
    }
    t0 = time.perf_counter()
    status, text, rev = a.call("PUT", "/v1/config", body)
    if status != 200:
        sys.exit(f"PUT /v1/config: {status} {text[:300]!r}")
    for n in nodes:
        n.call("GET", f"/v1/cluster/wait?revision={rev}&timeout_ms=60000")
    print(f"  {routes} routes written and applied on every node in "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms")

    def change(i, measure=True):
        time.sleep(0.2)  # let the heartbeat and the last apply settle
        before, writer = b.cpu_seconds(), a.cpu_seconds()
        sent = time.perf_counter()
        status, text, rev = a.call("PATCH", f"/v1/routes/r{i + 2}",
                                   {"match": {"paths": f"/moved{i}/"}})
        if status != 200:
            sys.exit(f"PATCH: {status} {text!r}")
        b.call("GET", f"/v1/cluster/wait?revision={rev}&timeout_ms=60000")
        reached_b = (time.perf_counter() - sent) * 1e3
        a.call("GET", f"/v1/cluster/wait?revision={rev}&timeout_ms=60000")
        if not measure:  # under traffic: no /metrics scrape of its own on node b
            return reached_b
        return (b.cpu_seconds() - before) * 1e3, \
            b.metric("sluicegate_cluster_last_apply_seconds") * 1e3, \
            (a.cpu_seconds() - writer) * 1e3

    # CPU first, without traffic (the process's CPU counts every request it serves).
    cpu, apply_ms, writer_cpu = [], [], []
    for i in range(changes):
        c, ms, w = change(i)
        cpu.append(c)
        apply_ms.append(ms)
        writer_cpu.append(w)

    # Then traffic through node b, runs of the same length: quiet, while the same number
    # of changes is made, quiet again (the two quiet runs show the machine's noise).
    seconds = max(5, changes // 4 + 2)
    quiet = [wrk_run(b.port, seconds, "/r1/")]
    result = {}

    def load():
        result["busy"] = wrk_run(b.port, seconds, "/r1/")

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.5)
    reached = [change(i, measure=False) for i in range(changes, 2 * changes)]
    loader.join()
    quiet.append(wrk_run(b.port, seconds, "/r1/"))
    return cpu, apply_ms, writer_cpu, quiet, result.get("busy"), reached


class FileNode(Node):
    """A file-mode gateway with exactly the entities node `like` serves."""

    def __init__(self, root, like, cpus=None):
        status, body, _ = like.call("GET", "/v1/config")
        if status != 200:
            sys.exit(f"GET /v1/config: {status}")
        config = json.loads(body)
        config = {k: v for k, v in config.items() if v}
        self.port = free_port()
        config["listeners"] = [{"address": f"127.0.0.1:{self.port}"}]
        config["admin"] = {"enabled": False}
        config["access_log"] = {"target": "stdout"}  # as examples/cluster.yaml
        config["data_dir"] = os.path.join(root, "file-data")
        path = os.path.join(root, "file-mode.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.name = "file"
        self.log = open(os.path.join(root, "file.log"), "w")
        self.proc = subprocess.Popen(pinned(cpus) + [BINARY, "run", "-c", path],
                                     stdout=subprocess.DEVNULL,
                                     stderr=self.log, env=dict(os.environ, RUST_LOG="warn"))
        if not listening(self.port, 60):
            sys.exit("the file-mode gateway did not start; see its log")


def request_cpu(cluster_node, file_node, rounds):
    """us/req of each gateway under the same wrk load, rounds interleaved."""
    out = []
    for r in range(rounds):
        us = {}
        order = (cluster_node, file_node) if r % 2 == 0 else (file_node, cluster_node)
        for n in order:
            before = n.process_cpu_seconds()
            stats = wrk_run(n.port, 5, "/r1/")
            used = n.process_cpu_seconds() - before
            us[n.name] = used * 1e6 / max(1.0, stats["rps"] * 5)
        out.append((us[cluster_node.name], us[file_node.name]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200, help="changes for the propagation part")
    ap.add_argument("--routes", type=int, default=10_000, help="routes for the second part")
    ap.add_argument("--changes", type=int, default=20,
                    help="changes at that many routes (twice: alone, then under traffic)")
    ap.add_argument("--pin", action="store_true",
                    help="node b and its traffic on the CPUs but the first; the rest on the first")
    ap.add_argument("--origin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.origin:
        return serve_origin(args.origin)
    node_b_cpus = None
    if args.pin:
        # Everything started from here inherits CPU 0 (nodes a and c, PostgreSQL, this
        # script); node b (and the file-mode node it is compared with) and its traffic
        # (wrk, the origin) get the others, as if they ran on machines of their own.
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not shutil.which("taskset"):
            sys.exit("--pin needs two CPUs and taskset")
        os.sched_setaffinity(0, {cpus[0]})
        node_b_cpus = ",".join(str(c) for c in cpus[1:])
        global TRAFFIC_CPUS
        TRAFFIC_CPUS = node_b_cpus
    if not os.access(BINARY, os.X_OK):
        sys.exit("build first: cargo build --release")

    root = tempfile.mkdtemp(prefix="sluicegate-cluster-bench-")
    os.chmod(root, 0o755)
    pg = nodes = server = None
    try:
        pg = Postgres(root)
        subprocess.run([BINARY, "migrations", "up", "-c", CONFIG], check=True,
                       env=dict(os.environ, PG_URL=pg.url, ADMIN_TOKEN=TOKEN),
                       stdout=subprocess.DEVNULL)
        server = Origin(root)
        origin = f"127.0.0.1:{server.port}"
        nodes = [Node(n, root, pg.url, node_b_cpus if n == "b" else None)
                 for n in ("a", "b", "c")]
        status, text, _ = nodes[0].call("POST", "/v1/upstreams",
                                        {"name": "origin", "targets": [origin]})
        if status != 201:
            sys.exit(f"upstream: {status} {text!r}")

        took = propagation(nodes, args.n)
        print(f"propagation over {args.n} changes, write on a -> served by a, b and c (ms): "
              f"p50 {statistics.median(took):.1f}  p99 {pct(took, 99):.1f}  "
              f"max {max(took):.1f}")

        cpu, apply_ms, writer_cpu, quiet, busy, reached = many_routes(
            nodes, origin, args.routes, args.changes)
        print(f"one change at {args.routes} routes, node b, over {args.changes} changes: "
              f"process CPU ms p50 {statistics.median(cpu):.1f} max {max(cpu):.1f}; "
              f"apply ms p50 {statistics.median(apply_ms):.1f} max {max(apply_ms):.1f}; "
              f"node a (takes the write, checks it, applies it) CPU ms p50 "
              f"{statistics.median(writer_cpu):.1f}")
        if quiet[0] is not None:
            print(f"traffic on node b (wrk -t1 -c8): quiet {quiet[0]}; during changes {busy}; "
                  f"quiet again {quiet[1]}")
            print(f"  during the traffic, write on a -> applied on b (ms): "
                  f"p50 {statistics.median(reached):.1f} max {max(reached):.1f}")
            file_node = FileNode(root, nodes[1], node_b_cpus)
            try:
                ratios = request_cpu(nodes[1], file_node, rounds=4)
            finally:
                file_node.stop()
            print("request CPU, the same routes from the store (node b) and from a file, "
                  "us/req per round, order alternating (cluster/file): "
                  + ", ".join(f"{c:.1f}/{f:.1f}" for c, f in ratios)
                  + f"; median ratio {statistics.median(c / f for c, f in ratios):.3f}")
    finally:
        for n in nodes or []:
            n.stop()
        if server:
            server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
