#!/usr/bin/env python3
"""Side-by-side benchmark: Rathaus against Matrix Synapse on this machine, in one run.

The same workload through each system's own client API, on loopback:
100 concurrent senders in 10 rooms (10 senders per room) post 1 KiB text messages, each
sender waiting for every acknowledgement before its next post (100 posts each, so every
room ends with exactly 1,000 messages); then fresh devices of further members of the
first room fetch its newest 1,000 messages.

- Rathaus: `rathaus-bench --only peer-ingest --json` (real `rathaus-server` process, sled
  store, 100 enrolled `rathaus_client::Client`s; see tests/src/bench/peer.rs).
- Synapse: PyPI `matrix-synapse` (pinned below) in a temporary venv, on a throwaway
  PostgreSQL 15 cluster (Unix socket only, no TCP), listening on 127.0.0.1 with its rate
  limits lifted; the load generator is tests/peers/synapse_load.py (asyncio + aiohttp).

Prints a table with the ratios; `--markdown FILE` writes it as markdown as well.
Everything lives in one temporary directory that is removed on exit (also on Ctrl-C).
Run as root (PostgreSQL then runs as the `postgres` user) or as an ordinary user.

    cargo build --release -p rathaus-tests -p rathaus-server --bins
    python3 tests/peers/synapse.py [--quick] [--markdown FILE] [--venv DIR]

Not part of CI: it installs from PyPI and takes several minutes.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SYNAPSE = "matrix-synapse==1.163.2"
# Synapse's `postgres` extra builds psycopg2 from source; the binary wheel needs no
# compiler or libpq headers and provides the same module.
PIP_PACKAGES = [SYNAPSE, "psycopg2-binary==2.9.13", "aiohttp==3.14.5"]
PG_BIN = "/usr/lib/postgresql/15/bin"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

SENDERS = 100
ROOMS = 10
FULL = {"posts": 100, "readers": 5}
QUICK = {"posts": 20, "readers": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 posts per sender, 2 readers")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    ap.add_argument("--json", metavar="FILE", help="write both sides' raw figures as JSON")
    ap.add_argument(
        "--bench",
        default=os.path.join(REPO, "target", "release", "rathaus-bench"),
        help="the rathaus-bench binary (release build)",
    )
    ap.add_argument(
        "--venv",
        metavar="DIR",
        help="use this venv (created and filled if missing) instead of a temporary one",
    )
    ap.add_argument(
        "--only",
        choices=["rathaus", "synapse"],
        help="run one side only and print its raw figures (for trying the setup)",
    )
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.only != "synapse" and not os.path.exists(args.bench):
        sys.exit(f"{args.bench} missing: cargo build --release -p rathaus-tests -p rathaus-server --bins")

    tmp = tempfile.mkdtemp(prefix="rathaus-peer-")
    os.chmod(tmp, 0o755)  # the postgres user must reach its directories below
    cleanup = Cleanup(tmp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        venv = args.venv or os.path.join(tmp, "venv")
        python = install(venv)
        versions = {
            "synapse": run_out([python, "-c", "import synapse; print(synapse.__version__)"]),
            "python": run_out([python, "-c", "import platform; print(platform.python_version())"]),
            "postgresql": run_out([os.path.join(PG_BIN, "postgres"), "--version"]),
            "rathaus_commit": run_out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0],
        }

        rathaus = None
        if args.only != "synapse":
            log("== Rathaus (rathaus-bench --only peer-ingest)")
            rathaus = run_rathaus(args.bench, args.quick)
        if args.only == "rathaus":
            print(json.dumps(rathaus, indent=2))
            return

        log("== Synapse")
        pg = Postgres(tmp, cleanup)
        pg.start()
        synapse = Synapse(tmp, python, pg, cleanup)
        synapse.start()
        out = os.path.join(tmp, "synapse-result.json")
        subprocess.run(
            [
                python,
                os.path.join(HERE, "synapse_load.py"),
                "--base", synapse.base,
                "--secret", synapse.secret,
                "--senders", str(SENDERS),
                "--rooms", str(ROOMS),
                "--posts", str(sizes["posts"]),
                "--readers", str(sizes["readers"]),
                "--synapse-pid", str(synapse.proc.pid),
                "--postgres-pid", str(pg.postmaster_pid()),
                "--out", out,
            ],
            check=True,
        )
        with open(out) as f:
            synapse_result = json.load(f)
        versions["load_after"] = os.getloadavg()[0]
    finally:
        cleanup.run()
    if args.only == "synapse":
        print(json.dumps({"versions": versions, "synapse": synapse_result}, indent=2))
        return

    table = Table(rathaus, synapse_result, versions, sizes)
    print()
    print(table.text())
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table.markdown())
        log(f"markdown written to {args.markdown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"versions": versions, "rathaus": rathaus, "synapse": synapse_result}, f, indent=2
            )


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_out(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def install(venv):
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        log(f"== venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    log("== pip install " + " ".join(PIP_PACKAGES))
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PIP_PACKAGES],
        check=True,
    )
    return python


def run_rathaus(bench, quick):
    cmd = [bench, "--only", "peer-ingest", "--json"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    rows = {}
    for row in json.loads(out)["results"]:
        name = row["workload"].replace(" (quick)", "")
        if row["value"] is None:
            sys.exit(f"rathaus-bench could not run {name}")
        rows[name] = row["value"]
    return rows


class Cleanup:
    """Stops what was started, in reverse order, then removes the temporary directory."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.steps = []

    def add(self, step):
        self.steps.append(step)

    def run(self):
        for step in reversed(self.steps):
            try:
                step()
            except Exception as e:  # keep cleaning up
                log(f"cleanup: {e}")
        self.steps = []
        shutil.rmtree(self.tmp, ignore_errors=True)


class Postgres:
    """A throwaway PostgreSQL 15 cluster: Unix socket in the temporary directory, no TCP."""

    def __init__(self, tmp, cleanup):
        self.data = os.path.join(tmp, "pgdata")
        self.sock = os.path.join(tmp, "pgsock")
        self.logfile = os.path.join(tmp, "postgres.log")
        self.cleanup = cleanup
        self.as_root = os.geteuid() == 0

    def cmd(self, *argv):
        argv = [os.path.join(PG_BIN, argv[0]), *argv[1:]]
        return (["runuser", "-u", "postgres", "--"] if self.as_root else []) + argv

    def start(self):
        os.makedirs(self.sock)
        os.makedirs(self.data, mode=0o700)
        open(self.logfile, "w").close()
        if self.as_root:
            for path in (self.sock, self.data, self.logfile):
                shutil.chown(path, "postgres", "postgres")
        # Synapse requires a database with C collation and UTF8 encoding.
        subprocess.run(
            self.cmd("initdb", "-D", self.data, "--auth=trust", "-E", "UTF8", "--locale=C", "-U", "postgres"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = f"-c listen_addresses='' -c unix_socket_directories={self.sock}"
        subprocess.run(
            self.cmd("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options, "-w", "start"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.cleanup.add(self.stop)
        psql = self.cmd("psql", "-h", self.sock, "-U", "postgres", "-q", "-c")
        subprocess.run(psql + ["CREATE ROLE synapse LOGIN"], check=True)
        subprocess.run(
            psql
            + [
                "CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' "
                "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ],
            check=True,
        )
        log(f"   PostgreSQL up, socket in {self.sock}")

    def postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def stop(self):
        subprocess.run(
            self.cmd("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"),
            check=False,
            stdout=subprocess.DEVNULL,
        )


class Synapse:
    """A Synapse homeserver on 127.0.0.1 with its rate limits lifted."""

    def __init__(self, tmp, python, pg, cleanup):
        self.dir = os.path.join(tmp, "synapse")
        self.python = python
        self.pg = pg
        self.cleanup = cleanup
        self.secret = secrets.token_hex(32)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        os.makedirs(self.dir)
        generated = os.path.join(self.dir, "homeserver.yaml")
        # The generated file brings the signing key and log configuration; the second
        # file (JSON is YAML) overrides the settings that matter here, key by key.
        subprocess.run(
            [
                self.python, "-m", "synapse.app.homeserver",
                "--server-name", "rathaus-peer.test",
                "--config-path", generated,
                "--data-directory", self.dir,
                "--generate-config", "--report-stats=no",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=self.dir,
        )
        override = os.path.join(self.dir, "bench.yaml")
        with open(override, "w") as f:
            json.dump(self.settings(), f, indent=2)
        log_file = open(os.path.join(self.dir, "synapse.stderr"), "w")
        self.proc = subprocess.Popen(
            [self.python, "-m", "synapse.app.homeserver", "-c", generated, "-c", override],
            cwd=self.dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        self.cleanup.add(self.stop)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"Synapse exited ({self.proc.returncode}); see {log_file.name}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        log(f"   Synapse up on {self.base}")
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        sys.exit("Synapse did not come up within 300 s")

    def settings(self):
        unlimited = {"per_second": 1_000_000, "burst_count": 1_000_000}
        return {
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "psycopg2",
                "args": {
                    "user": "synapse",
                    "database": "synapse",
                    "host": self.pg.sock,
                    "cp_min": 5,
                    "cp_max": 10,
                },
            },
            "registration_shared_secret": self.secret,
            "enable_registration": False,
            "report_stats": False,
            # Loopback only: no key servers, no federation, no URL previews.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            # Setup speed only (registering the users); no message path hashes passwords.
            "bcrypt_rounds": 4,
            # Otherwise the limiter is what gets measured (rc_message: 0.2/s, burst 10).
            "rc_message": unlimited,
            "rc_registration": unlimited,
            "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_joins_per_room": unlimited,
            "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
            "rc_room_creation": unlimited,
            "rc_presence": {"per_user": unlimited},
            "rc_admin_redaction": unlimited,
        }

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Table:
    """The side-by-side table; ratio = Rathaus / Synapse."""

    def __init__(self, rathaus, synapse, versions, sizes):
        self.versions = versions
        self.sizes = sizes
        r, s = rathaus, synapse
        fetch = "peer-fetch-1000"
        self.rows = [
            ("throughput", "msg/s", "higher", s["rate"], r["peer-ingest"], r["peer-ingest-wire"]),
            ("p50 until acknowledged", "ms", "lower", s["p50_ms"], r["peer-ingest-p50"], r["peer-ingest-wire-p50"]),
            ("p99 until acknowledged", "ms", "lower", s["p99_ms"], r["peer-ingest-p99"], r["peer-ingest-wire-p99"]),
            ("server CPU per message", "µs", "lower", s["server_cpu_us"], r["peer-ingest-server-cpu"], r["peer-ingest-wire-server-cpu"]),
            ("load generator CPU per message", "µs", "-", s["load_cpu_us"], r["peer-ingest-load-cpu"], r["peer-ingest-wire-load-cpu"]),
            ("fetch newest 1,000 (fresh device, median)", "ms", "lower", s["fetch_ms"], r[fetch], None),
        ]
        self.synapse = s

    def header(self):
        return [
            "measure", "unit", "better", "Synapse",
            "Rathaus Client::send_text", "ratio",
            "Rathaus Client::request", "ratio",
        ]

    def cells(self):
        out = []
        for name, unit, better, syn, app, wire in self.rows:
            out.append([
                name, unit, better, num(syn),
                num(app), ratio(app, syn),
                num(wire) if wire is not None else "–",
                ratio(wire, syn) if wire is not None else "–",
            ])
        return out

    def text(self):
        rows = [self.header()] + self.cells()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines + ["", self.footer()])

    def markdown(self):
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * 5]
        lines += ["| " + " | ".join(r) + " |" for r in self.cells()]
        return "\n".join(lines + ["", self.footer(), ""])

    def footer(self):
        v, s = self.versions, self.synapse
        posts = self.sizes["posts"]
        return (
            f"{SENDERS} senders in {ROOMS} rooms x {posts} posts of 1 KiB; ratio = Rathaus / "
            f"Synapse. Synapse {v['synapse']} (Python {v['python']}) on {v['postgresql']}; "
            f"Rathaus {v['rathaus_commit']}. Load average {v['load_before']:.2f} before, "
            f"{v.get('load_after', float('nan')):.2f} after. Synapse CPU per message: "
            f"{num(s['synapse_cpu_us'])} µs Synapse + {num(s['postgres_cpu_us'])} µs PostgreSQL; "
            f"Synapse load generator at {s['load_cpu_share']:.0f} % of one core; Synapse fetch "
            f"took {s['fetch_pages']} page(s) of /messages (limit {s['fetch_limit']}), "
            f"initial /sync {num(s['sync_ms'])} ms on top."
        )


def num(x):
    if x is None:
        return "–"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}"


if __name__ == "__main__":
    main()
