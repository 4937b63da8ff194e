"""Load on `bastion guard`: throughput and p50/p99 latency of the demo digits CNN, with and without the guard.

    OMP_NUM_THREADS=1 python benchmarks/guard_load.py [--seconds 8] [--batch 1] [--concurrency 4] [--rounds 3]
                                                      [--before SRC] [--json out.json]
                                                      [--demo breast-cancer-mlp] [--round-trip] [--cpu]

Each server runs in its own process on 127.0.0.1; this process is the load generator (bounded: a fixed duration;
`--concurrency` requests in flight in the closed loop, a fixed number sent at fixed times in the open loop). It is one
asyncio event loop sending prepared HTTP/1.1 requests on persistent connections, so its own cost and pauses stay
small beside the servers' (the first version used urllib from 16 threads and a new connection per request: its GIL
hand-offs showed up in every p99, and within a minute the closed connections exhausted the ephemeral ports).
Servers: `plain`: the model loaded in-process behind Bastion's standard-library server
(`bastion.models.http_server`, no rules); `guard`: `bastion guard serve` with the default policy (input checks
only; the model in the sandboxed worker); `guard+rules`: `bastion guard serve` with PRADA, the query-distribution
monitor, the stateful query detector (action alert), a token bucket that does not bind, and rounding of the
outputs; with `--before SRC` (a `src` folder of an earlier Bastion, e.g. from `git archive`), also
`guard+rules@before`: that code serving the same rules (without the stateful detector if it does not know it).
The servers are measured interleaved, `--rounds` times (on a shared machine, load drifts between measurements):
1. Saturation: `--concurrency` closed-loop workers for `--seconds`; requests per second.
2. Latency at 80% of the plain server's saturation throughput (that round's): an open loop (requests scheduled at
   fixed times; latency measured from the scheduled time, so queueing counts) against every server; p50 and p99.
Target (issue 19): the guard adds at most 15% to p99 at that rate. Prints each round and the median ratio of each
server's p99 to the plain server's in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

PLAIN = """
import sys
from bastion.models import load_target
from bastion.models.http_server import make_server
target = load_target(sys.argv[1], device="cpu")
info = {"n_classes": target.n_classes, "input_shape": list(target.input_shape), "output": "probabilities",
        "bounds": list(target.bounds)}
make_server(lambda x: target.probabilities(x).numpy(), info, port=int(sys.argv[2])).serve_forever()
"""

POLICY = """tiers:
  default:
    rate: {per_second: 100000, burst: 100000}
    extraction: {prada_delta: 0.96, prada_min_queries: 200, ood_share: 0.3, STATEFULaction: alert}
    output: rounding:3
"""
STATEFUL = "stateful_quantile: 0.001, "

# CPU time per single-input request of the guard's rule path (Guard.answer, plus the monitor run an answer leaves
# due), in-process, model in-process: less sensitive to a shared machine's load than latency is.
CPU_PROBE = """
import sys, time, tempfile, yaml, numpy as np
from pathlib import Path
from bastion.demo.cache import demo_model
from bastion.guard.app import Guard
from bastion.guard.audit_log import AuditLog
from bastion.guard.backend import ServedModel
from bastion.guard.guard_policy import parse_policy
from bastion.guard.rules import Reference
d = demo_model("digits-cnn", progress=False)
g = Guard(ServedModel(str(d.model_path), sandbox=False), parse_policy(yaml.safe_load(sys.argv[1])),
          AuditLog(Path(tempfile.mkdtemp()) / "a.sqlite"), Reference(d.train))
tier, x = g.policy.tiers["default"], np.asarray(d.test.x, np.float32)
def one(i, key):
    out = g.answer(key, tier, x[i % len(x)][None])
    if len(out) == 3 and out[2]:
        g.settle_later(key, tier)
for i in range(300):
    one(i, "warm")
best = []
for r in range(5):
    start = time.process_time()
    for i in range(1000):
        one(i, f"k{r}")
    best.append((time.process_time() - start) / 1000 * 1e6)
print(f"{min(best):.0f}")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: Path, data: Path, folder: Path, before: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    if kind == "plain":
        command = [sys.executable, "-c", PLAIN, str(model), str(port)]
    else:
        command = [sys.executable, "-m", "bastion", "guard", "serve", str(model), "--port", str(port),
                   "--audit", str(folder / f"{kind}.sqlite")]
        if kind.startswith("guard+rules"):
            old = kind.endswith("@before")
            knows = not old or "stateful_quantile" in (before / "bastion/guard/guard_policy.py").read_text()
            policy = folder / f"{kind}.yaml"
            policy.write_text(POLICY.replace("STATEFUL", STATEFUL if knows else ""))
            command += ["--policy", str(policy), "--data", str(data)]
            if old:
                env["PYTHONPATH"] = str(before)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/predict"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{kind}: the server did not start")


FAILED: list[str] = []  # requests that got no 200 answer (a reset connection, a refusal): counted, not retried


def raw_request(url: str, body: bytes) -> bytes:
    """The bytes of one POST (HTTP/1.1, keep-alive), prepared once so sending costs the generator little."""
    rest = url.split("://", 1)[1]
    host, _, path = rest.partition("/")
    return (f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Connections:
    """Persistent connections to one server: an idle one is reused, else a new one is opened (at most `limit`;
    beyond that a request waits for one to come back, and the wait counts in its latency). One connection per
    request would leave tens of thousands in TIME_WAIT within a minute and exhaust the ephemeral ports."""

    def __init__(self, url: str, limit: int = 64):
        import asyncio

        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.idle: asyncio.LifoQueue = asyncio.LifoQueue()
        self.slots = asyncio.Semaphore(limit)

    async def post(self, request: bytes) -> None:
        """Send one prepared request and read its answer; a failure is counted in FAILED, not raised."""
        import asyncio

        async with self.slots:
            try:
                reader, writer = (self.idle.get_nowait() if not self.idle.empty()
                                  else await asyncio.open_connection(self.host, self.port))
            except OSError as exc:
                FAILED.append(type(exc).__name__)
                return
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    FAILED.append(head[:40].decode(errors="replace"))
                if b"connection: close" in head.lower():
                    writer.close()
                else:
                    self.idle.put_nowait((reader, writer))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                FAILED.append(type(exc).__name__)
                writer.close()

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


def saturation(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> float:
    """Requests per second with `concurrency` closed-loop clients (one request in flight each)."""
    import asyncio

    requests = [raw_request(url, b) for b in bodies]

    async def run() -> float:
        pool = Connections(url, concurrency)
        done = [0] * concurrency
        stop = time.perf_counter() + seconds

        async def client(i: int) -> None:
            while time.perf_counter() < stop:
                await pool.post(requests[(i + done[i] * concurrency) % len(requests)])
                done[i] += 1

        begin = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        pool.close()
        return sum(done) / (time.perf_counter() - begin)

    return asyncio.run(run())


def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, connections: int) -> dict[str, float]:
    """Requests sent at fixed times (`rate` per second, whether or not earlier ones were answered); each latency
    runs from its scheduled time, so time spent queued (for one of the `connections` or in the server) counts. The
    same number of connections as the saturation run: a server is loaded at 80% of what it answered on them."""
    import asyncio

    requests = [raw_request(url, b) for b in bodies]
    n = int(rate * seconds)
    latencies = np.zeros(n)

    async def run() -> None:
        pool = Connections(url, connections)
        loop = asyncio.get_running_loop()
        begin = loop.time() + 0.1

        async def one(i: int) -> None:
            scheduled = begin + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            await pool.post(requests[i % len(requests)])
            latencies[i] = loop.time() - scheduled

        await asyncio.gather(*(one(i) for i in range(n)))
        pool.close()

    asyncio.run(run())
    return {"rate": rate, "requests": n, "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000)}


def round_trip(name: str) -> None:
    """Print the mean time of one single-input batch through the guard's sandboxed model worker."""
    from bastion.demo.cache import demo_model
    from bastion.guard.backend import ServedModel

    demo = demo_model(name, progress=False)
    model = ServedModel(str(demo.model_path))
    x = np.asarray(demo.test.x[:1], dtype=np.float32)
    try:
        for _ in range(50):
            model.predict(x)
        start = time.perf_counter()
        for _ in range(500):
            model.predict(x)
        print(f"{name}: {(time.perf_counter() - start) / 500 * 1000:.2f} ms per one-input round trip "
              f"({model.isolation})")
    finally:
        model.close()


def cpu_probe(before: Path | None) -> None:
    """Print the probe's µs of CPU per request for each configuration (min over 5 runs of 1,000 requests)."""
    runs = [("guard (default policy)", "tiers: {default: {}}", None),
            ("guard+rules", POLICY.replace("STATEFUL", STATEFUL), None)]
    if before is not None:
        knows = "stateful_quantile" in (before / "bastion/guard/guard_policy.py").read_text()
        runs.append(("guard+rules@before", POLICY.replace("STATEFUL", STATEFUL if knows else ""), before))
    for name, policy, src in runs:
        env = dict(os.environ, **({"PYTHONPATH": str(src)} if src else {}))
        done = subprocess.run([sys.executable, "-c", CPU_PROBE, policy], capture_output=True, text=True, env=env)
        print(f"{name:22s} {done.stdout.strip() or done.stderr.strip()[-200:]} us CPU per request "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="an earlier Bastion's src folder: also serve the rules with it")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--demo", default="digits-cnn", choices=["digits-cnn", "breast-cancer-mlp"],
                        help="the demo model served (default digits-cnn)")
    parser.add_argument("--round-trip", action="store_true", help="only the sandboxed worker's round trip for one "
                        "input (ServedModel.predict, 500 calls after 50 warm-up)")
    parser.add_argument("--cpu", action="store_true", help="only the in-process CPU time per request of the rule "
                        "path (default policy vs the rules; with --before, the rules on that code too)")
    args = parser.parse_args()
    if args.round_trip:
        round_trip(args.demo)
        return
    if args.cpu:
        cpu_probe(args.before)
        return
    from bastion.demo.cache import demo_model

    demo = demo_model(args.demo, progress=False)
    x = np.asarray(demo.test.x, dtype=np.float32)
    bodies = [json.dumps({"inputs": x[i:i + args.batch].tolist()}).encode() for i in range(0, len(x), args.batch)]
    kinds = ["plain", "guard", "guard+rules"] + (["guard+rules@before"] if args.before else [])
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = {kind: start(kind, demo.model_path, demo.train_path, Path(tmp), args.before) for kind in kinds}
        try:
            for _ in range(args.rounds):
                results: dict[str, dict] = {}
                for kind, (_, url) in servers.items():
                    saturation(url, bodies, 1.0, args.concurrency)  # warm-up
                    results[kind] = {"saturation_rps": saturation(url, bodies, args.seconds, args.concurrency)}
                rate = 0.8 * results["plain"]["saturation_rps"]
                for kind, (_, url) in servers.items():
                    before = len(FAILED)
                    results[kind].update(open_loop(url, bodies, rate, args.seconds, args.concurrency))
                    results[kind]["failed"] = len(FAILED) - before
                base = results["plain"]["p99_ms"]
                print(f"round {len(rounds) + 1} (load average {os.getloadavg()[0]:.1f}):")
                for kind, row in results.items():
                    row["p99_ratio"] = row["p99_ms"] / base
                    print(f"  {kind:18s} saturation {row['saturation_rps']:7.1f} req/s | at {row['rate']:.1f} req/s: "
                          f"p50 {row['p50_ms']:6.2f} ms, p99 {row['p99_ms']:7.2f} ms (x{row['p99_ratio']:.2f} plain's),"
                          f" {row['failed']} failed", flush=True)
                rounds.append(results)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
    print("median over rounds: " + ", ".join(
        f"{kind} {np.median([r[kind]['saturation_rps'] for r in rounds]):.0f} req/s, p99 x"
        f"{np.median([r[kind]['p99_ratio'] for r in rounds]):.2f}" for kind in kinds))
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "concurrency": args.concurrency,
                                         "seconds": args.seconds, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
