#!/usr/bin/python3
"""vpswatch /metrics against peers serving the same series (see docs/performance.md).

Takes the exposition a real `vpswatch run` serves for a simulated LNVPS account with
PEERS_VMS VMs, then serves the same series with
  (a) a Python prometheus_client exporter (py_exporter.py),
  (b) Prometheus' pushgateway (the series PUT into it, its /metrics scraped),
  (c) nginx serving the same bytes as a static file, plain and pre-gzipped
      (gzip_static on: vpswatch's own gzip body) -- the practical ceiling,
  (d) vpswatch itself,
and drives each with wrk on loopback at the same concurrency, plain and with
`Accept-Encoding: gzip`, A/B interleaved (every round runs every server in both modes,
the server order rotating between rounds). RSS is sampled from /proc during each run.

Knobs (environment): PEERS_VMS (1000), PEERS_SECONDS per run (5), PEERS_ROUNDS (3),
PEERS_CONNECTIONS (8), PEERS_THREADS (2), VPSWATCH_BIN (the release binary),
PEERS_ONLY (comma list of servers to drive, e.g. "vpswatch,nginx").
"""
import gzip
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
VMS = int(os.environ.get("PEERS_VMS", "1000"))
SECS = int(os.environ.get("PEERS_SECONDS", "5"))
ROUNDS = int(os.environ.get("PEERS_ROUNDS", "3"))
CONNS = int(os.environ.get("PEERS_CONNECTIONS", "8"))
THREADS = int(os.environ.get("PEERS_THREADS", "2"))
BIN = os.environ.get("VPSWATCH_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "release", "vpswatch")
ONLY = [s for s in os.environ.get("PEERS_ONLY", "").split(",") if s]

procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    procs.append(p)
    return p


def cleanup():
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def get(url, gz=False, timeout=30):
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gz else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers, r.read()


def wait_http(url, deadline_s=60):
    t = time.time()
    while time.time() - t < deadline_s:
        try:
            get(url, timeout=5)
            return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {deadline_s} s")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def rss_kib(pid, with_children=False):
    pids = [pid] + (children(pid) if with_children else [])
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return float("nan")
    x, u = float(m.group(1)), m.group(2)
    return x / 1000 if u == "us" else x if u == "ms" else x * 1000 if u == "s" else x * 60000


def wrk(url, gz, pid, with_children):
    args = ["wrk", f"-t{THREADS}", f"-c{CONNS}", f"-d{SECS}s", "--latency", url]
    if gz:
        args[1:1] = ["-H", "Accept-Encoding: gzip"]
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.25):
            peak[0] = max(peak[0], rss_kib(pid, with_children))

    th = threading.Thread(target=sample)
    th.start()
    out = subprocess.run(args, capture_output=True, text=True).stdout
    done.set()
    th.join()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps, "p50": p50, "p99": p99, "rss": peak[0] / 1024,
        "errors": (errors.group(1) if errors else "") + (f" non-2xx {non2xx.group(1)}" if non2xx else ""),
    }


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release first (or set VPSWATCH_BIN)")
    for tool in ["wrk", "nginx", "prometheus-pushgateway"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install -y --no-install-recommends wrk nginx prometheus-pushgateway python3-prometheus-client")
    work = tempfile.mkdtemp(prefix="vpswatch-peers-")
    os.chmod(work, 0o755)
    print(f"# vpswatch vs peers: {VMS} VMs, wrk -t{THREADS} -c{CONNS} -d{SECS}s, {ROUNDS} rounds")
    print(f"# host: {os.cpu_count()} CPUs, load average before: {open('/proc/loadavg').read().split()[:3]}")

    # The exposition: a real simulator + daemon, one rate-limited poll.
    sim = spawn([BIN, "--log.level", "warn", "simulate", "--listen", "127.0.0.1:0",
                 "--scenario", f"bench:{VMS}"], stdout=subprocess.PIPE, text=True)
    sim_url = secret = None
    for line in sim.stdout:
        if "listening on" in line and "http://" in line:
            sim_url = line[line.index("http://"):].split()[0]
        if "owner secret key" in line:
            secret = line.rsplit(":", 1)[1].strip()
        if sim_url and secret:
            break
    threading.Thread(target=lambda: [None for _ in sim.stdout], daemon=True).start()
    key = os.path.join(work, "bench.nsec")
    with open(key, "w") as f:
        f.write(secret)
    os.chmod(key, 0o600)
    vw_port = free_port()
    cfg = os.path.join(work, "vpswatch.toml")
    with open(cfg, "w") as f:
        f.write(f'poll_interval = "1h"\npoll_timeout = "30m"\n[web]\nlisten_address = "127.0.0.1:{vw_port}"\n'
                f'[[accounts]]\nname = "bench"\nprovider = "lnvps"\nbase_url = "{sim_url}"\nnsec_file = "{key}"\n')
    daemon = spawn([BIN, "--log.level", "warn", "run", "--config", cfg])
    vw = f"http://127.0.0.1:{vw_port}"
    t0 = time.time()
    print(f"# waiting for vpswatch's first poll of {VMS} VMs (rate-limited, ~{(VMS * 0.9 + 1) / 10:.0f} s)", flush=True)
    while True:
        try:
            if get(vw + "/-/ready", timeout=5)[0] == 200:
                break
        except Exception:
            pass
        if time.time() - t0 > 1800:
            raise SystemExit("first poll did not finish in 30 min")
        time.sleep(0.5)
    _, _, plain = get(vw + "/metrics")
    _, hdr, gzbody = get(vw + "/metrics", gz=True)
    assert hdr.get("Content-Encoding") == "gzip"
    assert gzip.decompress(gzbody) == plain
    # Stop the simulator: the daemon keeps serving its last rendering (next poll in 1 h).
    sim.terminate()
    sim.wait()
    series = sum(1 for l in plain.decode().splitlines() if l and not l.startswith("#"))
    print(f"# exposition: {series} series, {len(plain)} bytes plain, {len(gzbody)} bytes gzip (poll took {time.time() - t0:.0f} s)")
    site = os.path.join(work, "site")
    os.makedirs(site)
    os.chmod(site, 0o755)
    with open(os.path.join(site, "metrics"), "wb") as f:
        f.write(plain)
    with open(os.path.join(site, "metrics.gz"), "wb") as f:
        f.write(gzbody)
    for n in ["metrics", "metrics.gz"]:
        os.chmod(os.path.join(site, n), 0o644)
    text_path = os.path.join(site, "metrics")

    servers = {}
    servers["vpswatch"] = (vw + "/metrics", daemon.pid, False)

    # (a) Python exporter.
    py_port = free_port()
    py = spawn(["/usr/bin/python3", os.path.join(HERE, "py_exporter.py"), text_path, str(py_port)],
               stdout=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{py_port}/metrics", 120)
    servers["python"] = (f"http://127.0.0.1:{py_port}/metrics", py.pid, False)

    # (b) pushgateway, loaded with the same series.
    pg_port = free_port()
    pg = spawn(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{pg_port}", "--log.level=warn"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{pg_port}/-/ready")
    req = urllib.request.Request(f"http://127.0.0.1:{pg_port}/metrics/job/vpswatch", data=plain, method="PUT",
                                 headers={"Content-Type": "text/plain; version=0.0.4"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status in (200, 202), r.status
    servers["pushgateway"] = (f"http://127.0.0.1:{pg_port}/metrics", pg.pid, False)

    # (c) nginx, static bytes.
    ng_port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes auto;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path {work}/client_body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{ng_port};
    location = /metrics {{
      root {site};
      default_type "text/plain; version=0.0.4; charset=utf-8";
      gzip_static on;
      gzip_vary on;
    }}
  }}
}}
""")
    ng = spawn(["nginx", "-p", work, "-c", conf])
    wait_http(f"http://127.0.0.1:{ng_port}/metrics")
    _, h, b = get(f"http://127.0.0.1:{ng_port}/metrics", gz=True)
    assert h.get("Content-Encoding") == "gzip" and b == gzbody, "nginx does not serve the gzip file"
    servers["nginx"] = (f"http://127.0.0.1:{ng_port}/metrics", ng.pid, True)

    # Same series everywhere? (pushgateway adds job/instance labels and its own metrics.)
    for name, (url, _, _) in servers.items():
        body = get(url)[2].decode()
        n = sum(1 for l in body.splitlines() if l and not l.startswith("#"))
        gzn = len(get(url, gz=True)[2])
        print(f"# {name:12} {url}: {n} series, {len(body)} bytes plain, {gzn} bytes with gzip, "
              f"RSS idle {rss_kib(servers[name][1], servers[name][2]) / 1024:.1f} MiB")

    order = [s for s in ["vpswatch", "nginx", "python", "pushgateway"] if not ONLY or s in ONLY]
    results = {(s, gz): [] for s in order for gz in (False, True)}
    print()
    print("| round | mode | server | req/s | p50 ms | p99 ms | RSS MiB | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for rnd in range(ROUNDS):
        rot = order[rnd % len(order):] + order[:rnd % len(order)]
        for gz in ((False, True) if rnd % 2 == 0 else (True, False)):
            for s in rot:
                url, pid, kids = servers[s]
                r = wrk(url, gz, pid, kids)
                results[(s, gz)].append(r)
                print(f"| {rnd + 1} | {'gzip' if gz else 'plain'} | {s} | {r['rps']:.0f} | {r['p50']:.2f} | "
                      f"{r['p99']:.2f} | {r['rss']:.1f} | {r['errors'].strip()} |", flush=True)

    med = lambda k, s, gz: statistics.median(r[k] for r in results[(s, gz)])
    print()
    print(f"## Summary (median of {ROUNDS} rounds; RSS = peak sampled under load; "
          f"nginx = master + workers)")
    print()
    print("| mode | server | req/s | p50 ms | p99 ms | RSS MiB | vpswatch ÷ server (req/s) |")
    print("|---|---|---|---|---|---|---|")
    for gz in (False, True):
        for s in order:
            ratio = med("rps", "vpswatch", gz) / med("rps", s, gz) if "vpswatch" in order else float("nan")
            print(f"| {'gzip' if gz else 'plain'} | {s} | {med('rps', s, gz):.0f} | {med('p50', s, gz):.2f} | "
                  f"{med('p99', s, gz):.2f} | {max(r['rss'] for r in results[(s, gz)]):.1f} | {ratio:.2f}× |")
    print()
    print(f"# load average after: {open('/proc/loadavg').read().split()[:3]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
