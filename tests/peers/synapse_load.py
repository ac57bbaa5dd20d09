"""The Synapse half of tests/peers/synapse.py, run inside its venv (needs aiohttp).

Registers the users through the shared-secret admin API, creates the rooms, then runs the
load: every sender posts `posts` 1 KiB `m.room.message` events into its room through the
client-server API (`PUT /rooms/{id}/send/m.room.message/{txn}`), all senders at once, each
waiting for the answer (200 with an `event_id`) before its next post. Then every reader
logs in (a fresh device), runs the initial `/sync` a client runs (timed apart), and pages
back through `/messages` (`dir=b`, the largest `limit` Synapse honours) until it holds the
room's newest 1,000 messages. Writes the figures as JSON to `--out`.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import resource
import time
import urllib.parse

import aiohttp

PASSWORD = "correct horse battery staple"
POST_TEXT = 1024
FETCH = 1000
# Synapse caps a /messages page at 1,000 events (synapse/streams/config.py MAX_LIMIT).
FETCH_LIMIT = 1000
# Registrations in flight at once.
SETUP_CONCURRENCY = 8
TIMEOUT = aiohttp.ClientTimeout(total=600)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--senders", type=int, required=True)
    ap.add_argument("--rooms", type=int, required=True)
    ap.add_argument("--posts", type=int, required=True)
    ap.add_argument("--readers", type=int, required=True)
    ap.add_argument("--synapse-pid", type=int, required=True)
    ap.add_argument("--postgres-pid", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    assert a.senders % a.rooms == 0, "senders must split evenly into rooms"
    per_room = a.senders // a.rooms

    async with aiohttp.ClientSession(a.base, timeout=TIMEOUT) as admin:
        t = time.monotonic()
        limit = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def register(name):
            async with limit:
                return await register_user(admin, a.secret, name)

        senders = await asyncio.gather(*(register(f"p{3000 + i}") for i in range(a.senders)))
        readers = [f"l{3000 + i}" for i in range(a.readers)]
        reader_tokens = await asyncio.gather(*(register(r) for r in readers))
        rooms = []
        for k in range(a.rooms):
            creator = senders[k * per_room]
            body = await call(admin, "POST", "/_matrix/client/v3/createRoom", creator,
                              {"preset": "public_chat", "name": f"amt-{k}"})
            rooms.append(body["room_id"])
        for i, token in enumerate(senders):
            if i % per_room:
                await call(admin, "POST", join_path(rooms[i // per_room]), token, {})
        for token in reader_tokens:
            await call(admin, "POST", join_path(rooms[0]), token, {})
        print(f"   {a.senders} senders, {a.readers} readers, {a.rooms} rooms set up in "
              f"{time.monotonic() - t:.1f} s", flush=True)

    # One connection per sender, as every device has its own; opened before the clock runs.
    sessions = [
        aiohttp.ClientSession(a.base, timeout=TIMEOUT,
                              connector=aiohttp.TCPConnector(limit=1, force_close=False))
        for _ in senders
    ]
    try:
        for s, token in zip(sessions, senders):
            await call(s, "GET", "/_matrix/client/v3/account/whoami", token)
        cpu0 = (proc_cpu(a.synapse_pid), postgres_cpu(a.postgres_pid), own_cpu())
        start = time.monotonic()
        latencies = await asyncio.gather(*(
            send_all(sessions[i], senders[i], rooms[i // per_room], i, a.posts)
            for i in range(a.senders)
        ))
        elapsed = time.monotonic() - start
        syn_cpu = proc_cpu(a.synapse_pid) - cpu0[0]
        pg_cpu = postgres_cpu(a.postgres_pid, cpu0[1])
        load_cpu = own_cpu() - cpu0[2]
    finally:
        for s in sessions:
            await s.close()
    samples = sorted(x for per in latencies for x in per)
    total = a.senders * a.posts
    assert len(samples) == total, f"{len(samples)} of {total} posts acknowledged"
    print(f"   {total / elapsed:.0f} msg/s, p99 {quantile(samples, 0.99) * 1e3:.1f} ms", flush=True)

    expected = min(per_room * a.posts, FETCH)
    fetches, syncs, pages = [], [], 0
    async with aiohttp.ClientSession(a.base, timeout=TIMEOUT) as s:
        for name in readers:
            token = (await call(s, "POST", "/_matrix/client/v3/login", None, {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": PASSWORD,
                "initial_device_display_name": f"{name}'s fresh device",
            }))["access_token"]
            await call(s, "GET", "/_matrix/client/v3/account/whoami", token)
            t = time.monotonic()
            sync_filter = {"room": {"rooms": [rooms[0]], "timeline": {"limit": 1},
                                    "state": {"lazy_load_members": True}}}
            await call(s, "GET", "/_matrix/client/v3/sync?timeout=0&filter="
                       + urllib.parse.quote(json.dumps(sync_filter)), token)
            syncs.append(time.monotonic() - t)
            t = time.monotonic()
            got, n_pages = await fetch_newest(s, token, rooms[0], expected)
            fetches.append(time.monotonic() - t)
            assert got == expected, f"{name} fetched {got} of {expected} messages"
            pages = n_pages

    result = {
        "rate": total / elapsed,
        "p50_ms": quantile(samples, 0.5) * 1e3,
        "p99_ms": quantile(samples, 0.99) * 1e3,
        "server_cpu_us": (syn_cpu + pg_cpu) * 1e6 / total,
        "synapse_cpu_us": syn_cpu * 1e6 / total,
        "postgres_cpu_us": pg_cpu * 1e6 / total,
        "load_cpu_us": load_cpu * 1e6 / total,
        "load_cpu_share": 100 * load_cpu / elapsed,
        "fetch_ms": median(fetches) * 1e3,
        "fetch_max_ms": max(fetches) * 1e3,
        "fetch_pages": pages,
        "fetch_limit": FETCH_LIMIT,
        "fetched": expected,
        "sync_ms": median(syncs) * 1e3,
        "posts": total,
        "elapsed_s": elapsed,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)


def join_path(room):
    return f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/join"


async def call(session, method, path, token, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, path, json=body, headers=headers) as r:
        data = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data}")
        return data


async def register_user(session, secret, name):
    path = "/_synapse/admin/v1/register"
    nonce = (await call(session, "GET", path, None))["nonce"]
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, name, PASSWORD):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"notadmin")
    body = {"nonce": nonce, "username": name, "password": PASSWORD, "admin": False,
            "mac": mac.hexdigest()}
    return (await call(session, "POST", path, None, body))["access_token"]


async def send_all(session, token, room, sender, posts):
    headers = {"Authorization": f"Bearer {token}"}
    room = urllib.parse.quote(room)
    out = []
    for n in range(posts):
        text = f"Bekanntmachung {sender}/{n}: "
        text += "x" * (POST_TEXT - len(text))
        path = f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{sender}-{n}"
        t0 = time.monotonic()
        async with session.put(path, json={"msgtype": "m.text", "body": text},
                               headers=headers) as r:
            data = await r.json(content_type=None)
            if r.status != 200 or "event_id" not in data:
                raise RuntimeError(f"send: {r.status} {data}")
        out.append(time.monotonic() - t0)
    return out


async def fetch_newest(session, token, room, want):
    """Pages back from the end of the room until `want` messages are held."""
    got, pages, token_from = 0, 0, None
    room_q = urllib.parse.quote(room)
    lazy = urllib.parse.quote(json.dumps({"lazy_load_members": True}))
    while got < want:
        path = (f"/_matrix/client/v3/rooms/{room_q}/messages?dir=b&limit={FETCH_LIMIT}"
                f"&filter={lazy}")
        if token_from:
            path += "&from=" + urllib.parse.quote(token_from)
        page = await call(session, "GET", path, token)
        pages += 1
        got += sum(
            1 for e in page.get("chunk", [])
            if e.get("type") == "m.room.message"
            and len(e.get("content", {}).get("body", "")) == POST_TEXT
        )
        token_from = page.get("end")
        if not token_from or pages > 100:
            break
    return min(got, want), pages


def quantile(sorted_samples, q):
    """Nearest rank, as rathaus-bench computes it."""
    import math

    rank = min(max(math.ceil(q * len(sorted_samples)), 1), len(sorted_samples))
    return sorted_samples[rank - 1]


def median(xs):
    return quantile(sorted(xs), 0.5)


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, ppid field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def proc_cpu(pid):
    return ticks(pid)[1] / os.sysconf("SC_CLK_TCK")


def postgres_cpu(postmaster, before=None):
    """CPU seconds of the postmaster and its children; with `before` (an earlier result),
    the growth since (a backend that started since counts in full)."""
    now = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, t = ticks(int(entry))
        except (OSError, IndexError, ValueError):
            continue
        if int(entry) == postmaster or ppid == postmaster:
            now[int(entry)] = t / os.sysconf("SC_CLK_TCK")
    if before is None:
        return now
    return sum(t - before.get(pid, 0.0) for pid, t in now.items())


def own_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    asyncio.run(main())
