"""Load on `prompttune serve`: 8 tasks of different methods on one model, requests mixed at random
across them vs all requests to one task, the same total load; and memory per added task.

    python benchmarks/serve_load.py [--requests 640] [--concurrency 16] [--texts-per-request 1]
        [--rounds 2] [--max-batch-size 32] [--max-wait-ms 5] [--server-threads N] [--max-seconds 600] [--note TEXT]

Loopback only, bounded: every phase sends at most `--requests` requests and stops at
`--max-seconds` (requests not sent by then are reported as not sent), and the server is stopped
with SIGTERM at the end.

Set-up (under `--work`, default runs/bench_serve):
1. The embedded default backbone, all-MiniLM-L6-v2, with a masked-LM head fitted by
   `prompttune fit-lm-head` on `--head-texts` SST-2 sentences (once; reused if present).
2. 8 task artifacts, one per method: zero-shot, prompt-tuning, p-tuning, prefix-tuning,
   p-tuning-v2, p-tuning-v2 with a head, lora, adapter. Template `{sentence} It was {mask}.`,
   verbalizer {0: terrible, 1: great}. Their trained parameters are seeded random values (moved
   off their initial values by N(0, 0.02)): accuracy is not measured, only serving.
3. `prompttune serve` in a subprocess on 127.0.0.1, started with the first task and
   `--allow-dir` on the tasks' folder; the other 7 are added with `POST /v1/tasks`. After the
   start and after each added task (plus one request to it, so lazily allocated memory counts),
   the server's resident memory (VmRSS, /proc) is read; its growth per task is compared with the
   task's artifact size, with the tensors the pool says the task added (`added_bytes`) and with the
   model copy the pool states for it (`own_model_bytes`). A second copy of each task is then added
   under another name and measured the same way (the first task of a method also pays once for its
   code paths: importing peft, a first forward pass of that shape), and removed again.

Load: `--concurrency` clients (asyncio + httpx, closed loop: each sends its next request when its
last one is answered) send `--requests` requests of `--texts-per-request` SST-2 dev sentences.
"mixed": each request's task drawn at random (seeded) among the 8; "single": blocks of requests
that all go to one task, by default `--requests`/8 to each of the 8 tasks in turn (the tasks cost
differently per text: soft tokens lengthen the input, two tasks run on model copies of their own;
one task alone would compare the mix with that task's cost, not the cost of mixing). Phases run in the order single, mixed, mixed, single, ... (`--rounds` pairs), so
slow drift of the machine's load hits both alike; each phase is preceded by 2 untimed requests
per client. Throughput counts the texts answered while every client was busy: from a block's
start until its last request is handed out (the ramp-down after that, with ever fewer clients,
would weigh on 8 short blocks more than on one long one). Reported per phase: throughput (texts/s),
p50/p99 latency over all requests, failed requests, mean
micro-batch size (from /metrics), and for "single" each task's own throughput; and the ratio
mixed/single throughput per round, with its median.

Targets (issue 11): mixed throughput >= 0.9x single-task, 0 failed requests, memory per added task
within 2x of its artifact size. Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
MODEL = "all-MiniLM-L6-v2"
TEMPLATE = "{sentence} It was {mask}."
VERBALIZER = {"0": ["terrible"], "1": ["great"]}
TASKS = {  # name: (method, template, options)
    "zero-shot": ("zero-shot", TEMPLATE, {}),
    "prompt-tuning": ("prompt-tuning", "{soft:10} {sentence} It was {mask}.", {}),
    "p-tuning": ("p-tuning", "{soft:10} {sentence} It was {mask}.", {"encoder": "mlp"}),
    "prefix-tuning": ("prefix-tuning", TEMPLATE, {"prompt_length": 10}),
    "p-tuning-v2": ("p-tuning-v2", TEMPLATE, {"prompt_length": 10}),
    "p-tuning-v2-head": ("p-tuning-v2", None, {"prompt_length": 10, "head": True}),
    "lora": ("lora", TEMPLATE, {"lora_rank": 8}),
    "adapter": ("adapter", TEMPLATE, {"reduction_factor": 16}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=640, help="requests per phase (default 640)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients at once (default 16)")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of single/mixed phases (default 2)")
    ap.add_argument("--single-task", default="each", choices=["each", *TASKS],
                    help="where the single-task phase sends its requests: all to one task, or (each, the default) "
                         "requests/8 to each task in turn, so both phases carry the same mix of work")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=int, default=5)
    ap.add_argument("--server-threads", type=int, default=None,
                    help="torch threads of the server process (OMP_NUM_THREADS; default: torch's, one per core). On a "
                         "machine whose cores other processes are using, 1 avoids OpenMP threads waiting on each other")
    ap.add_argument("--max-seconds", type=float, default=600, help="bound on each phase's time (default 600)")
    ap.add_argument("--head-texts", type=int, default=2000, help="SST-2 sentences the MLM head is fitted on (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_serve"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load.json"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    work = Path(args.work)
    load_before = os.getloadavg()
    head = fit_head(work / "lm_head", args.head_texts)
    tasks = make_tasks(work / "tasks", head, args.seed)
    texts = [line.split("\t", 1)[1].strip() for line in (DATA / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]

    server = Server(tasks[0], work / "tasks", args)
    try:
        memory = add_tasks(server, tasks)
        phases = []
        for r in range(args.rounds):
            for mode in (("single", "mixed") if r % 2 == 0 else ("mixed", "single")):
                phases.append({"round": r, "mode": mode, **asyncio.run(run_phase(server, mode, texts, args, seed=args.seed + r))})
                print_phase(phases[-1])
    finally:
        server.stop()

    ratios = []
    for r in range(args.rounds):
        by_mode = {p["mode"]: p for p in phases if p["round"] == r}
        ratios.append(by_mode["mixed"]["texts_per_s"] / by_mode["single"]["texts_per_s"])
    summary = summarize(phases, ratios, memory)
    print_summary(summary, memory)
    write_record(args, load_before, os.getloadavg(), libraries=("fastapi",), setup={
        "model": MODEL, "lm_head_texts": args.head_texts, "tasks": {n: {"method": m, "template": t, "options": o}
                                                                   for n, (m, t, o) in TASKS.items()},
        "requests_per_phase": args.requests, "concurrency": args.concurrency,
        "texts_per_request": args.texts_per_request, "rounds": args.rounds, "single_task": args.single_task,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "server_threads": args.server_threads or "torch default (one per core)", "git_commit": git_commit()},
        summary=summary, memory=memory, phases=phases)


# --- set-up -------------------------------------------------------------------------------------


def fit_head(directory: Path, texts: int) -> Path:
    if (directory / "head.json").exists():
        print(f"MLM head: {directory} (reused)")
        return directory
    cmd = [sys.executable, "-m", "prompttune.cli", "fit-lm-head", "--data", str(DATA / "train.tsv"), "--text-field",
           "sentence", "--max-texts", str(texts), "--held-out", "500", "--out", str(directory)]
    print("fitting the MLM head:", shlex.join(cmd))
    subprocess.run(cmd, check=True, env=env())
    return directory


def make_tasks(directory: Path, head: Path, seed: int) -> list[Path]:
    """One artifact per method, trained parameters = seeded random values (see the docstring)."""
    from prompttune import TaskSpec, build_classifier, save_artifact

    paths = []
    for i, (name, (method, template, options)) in enumerate(TASKS.items()):
        spec = TaskSpec(method=method, model=MODEL, lm_head=str(head), text_fields=["sentence"], labels=["0", "1"],
                        template=template, verbalizer=VERBALIZER if template else None, options=options)
        torch.manual_seed(seed + i)
        clf, fp = build_classifier(spec)
        with torch.no_grad():
            for p in clf.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.02)
        save_artifact(directory / name, spec, clf, fp)
        paths.append(directory / name)
    return paths


def env(threads: int | None = None) -> dict:
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return out | ({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})


def git_commit() -> str | None:
    """The commit the server ran from (which task pool it had)."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


class Server:
    """`prompttune serve FIRST --port 0` in a subprocess; its URL from the line it prints."""

    def __init__(self, first: Path, allow: Path, args):
        cmd = [sys.executable, "-m", "prompttune.cli", "serve", str(first), "--port", "0", "--device", "cpu",
               "--allow-dir", str(allow), "--max-batch-size", str(args.max_batch_size), "--max-wait-ms",
               str(args.max_wait_ms), "--max-queue", str(max(1024, args.concurrency * args.texts_per_request)),
               "--log-level", "warning"]
        print("server:", shlex.join(cmd))
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env(args.server_threads))
        self.lines: list[str] = []
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if re.search(r"at http://\S+", line):
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout=300):
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.lines[-20:]))
        self.url = re.search(r"at (http://\S+)", next(l for l in self.lines if " at http://" in l)).group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=10).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def rss(self) -> int:
        """Resident memory of the server process, in bytes (VmRSS)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(prompttune_batch_size_(?:sum|count)) (\S+)$", text, re.M)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def add_tasks(server: Server, tasks: list[Path]) -> list[dict]:
    """RSS after the start (backbone + first task) and its growth after adding each other task; then,
    after adding a second copy of it under another name, the growth again: the first task of a method
    also pays for its code paths once (importing peft, a first forward pass of that shape), the second
    only for itself. The copies are removed again before the load phases."""
    with httpx.Client(timeout=120) as c:
        def grow(path: Path, name: str) -> int:
            before = server.rss()
            c.post(f"{server.url}/v1/tasks", json={"path": str(path), "name": name}).raise_for_status()
            c.post(f"{server.url}/v1/tasks/{name}/predict", json={"texts": ["a warm-up sentence"]}).raise_for_status()
            return server.rss() - before

        c.post(f"{server.url}/v1/tasks/{tasks[0].name}/predict", json={"texts": ["a warm-up sentence"]}).raise_for_status()
        rows = [{"task": tasks[0].name, "rss_bytes": server.rss(), "rss_growth_bytes": None, "rss_growth_second_copy_bytes": None}]
        for path in tasks[1:]:
            first = grow(path, path.name)
            rows.append({"task": path.name, "rss_bytes": server.rss(), "rss_growth_bytes": first,
                         "rss_growth_second_copy_bytes": grow(path, f"{path.name}-copy")})
        listed = {t["name"]: t for t in c.get(f"{server.url}/v1/tasks").json()["tasks"]}
        for path in tasks[1:]:
            c.delete(f"{server.url}/v1/tasks/{path.name}-copy").raise_for_status()
    for row in rows:
        info = listed[row["task"]]
        row.update(method=info["method"], artifact_bytes=info["bytes"], own_model_bytes=info["own_model_bytes"],
                   added_bytes=info["added_bytes"])
        if row["rss_growth_bytes"] is not None and info["bytes"]:
            row["growth_per_artifact_byte"] = round(row["rss_growth_bytes"] / info["bytes"], 1)
    return rows


# --- load ---------------------------------------------------------------------------------------


async def run_phase(server: Server, mode: str, texts: list[str], args, *, seed: int) -> dict:
    """One phase: "mixed" = one block of requests to random tasks; "single" = blocks of requests that
    all go to one task (`--single-task`, or each task in turn for `each`)."""
    rng = random.Random(f"{seed}-{mode}")
    names = list(TASKS)

    def requests(n: int, task: str | None) -> list[tuple[str, list[str]]]:
        return [(task or names[rng.randrange(len(names))], rng.sample(texts, args.texts_per_request)) for _ in range(n)]

    if mode == "mixed":
        blocks = [requests(args.requests, None)]
    elif args.single_task == "each":
        blocks = [requests(args.requests // len(names) + (i < args.requests % len(names)), name) for i, name in enumerate(names)]
    else:
        blocks = [requests(args.requests, args.single_task)]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        async def send(task: str, batch: list[str]) -> tuple[float, bool]:
            start = time.perf_counter()
            try:
                r = await client.post(f"/v1/tasks/{task}/predict", json={"texts": batch})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == len(batch)
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - start, ok

        await asyncio.gather(*(send(t, b) for t, b in requests(2 * args.concurrency, None)))  # warm-up, untimed
        before = server.metrics()
        deadline = time.monotonic() + args.max_seconds
        results: list[tuple[float, bool]] = []
        per_task, steady_texts, steady_seconds, not_sent = {}, 0, 0.0, 0
        for block in blocks:
            queue = list(reversed(block))
            done: list[tuple[float, bool]] = []
            emptied = None  # when the last request was handed out: from then on fewer clients are busy

            async def client_loop():
                nonlocal emptied
                while queue and time.monotonic() < deadline:
                    request = queue.pop()
                    if not queue and emptied is None:
                        emptied = (time.perf_counter(), len(done))
                    done.append(await send(*request))

            start = time.perf_counter()
            await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
            end, finished = emptied or (time.perf_counter(), len(done))
            texts, seconds = finished * args.texts_per_request, end - start
            steady_texts, steady_seconds, not_sent = steady_texts + texts, steady_seconds + seconds, not_sent + len(queue)
            results += done
            if len(blocks) > 1:
                per_task[block[0][0]] = round(texts / seconds, 2)
        after = server.metrics()
    latencies = sorted(t for t, _ in results)
    batches = after["prompttune_batch_size_count"] - before["prompttune_batch_size_count"]
    return {
        "requests_sent": len(results), "requests_not_sent": not_sent, "failed": sum(not ok for _, ok in results),
        "steady_seconds": round(steady_seconds, 3), "texts_per_s": round(steady_texts / steady_seconds, 2),
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 1), "latency_p99_ms": round(1000 * percentile(latencies, 99), 1),
        "mean_batch_size": round((after["prompttune_batch_size_sum"] - before["prompttune_batch_size_sum"]) / batches, 2)
        if batches else None,
        **({"texts_per_s_by_task": per_task} if per_task else {}),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of sorted `values` (nearest rank)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


# --- report -------------------------------------------------------------------------------------


def summarize(phases: list[dict], ratios: list[float], memory: list[dict]) -> dict:
    def median(mode, key):
        return round(statistics.median(p[key] for p in phases if p["mode"] == mode), 2)

    shared = [m for m in memory[1:] if m["own_model_bytes"] == 0]
    return {
        "throughput_ratio_mixed_over_single": [round(r, 3) for r in ratios],
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "texts_per_s": {mode: median(mode, "texts_per_s") for mode in ("single", "mixed")},
        "latency_p50_ms": {mode: median(mode, "latency_p50_ms") for mode in ("single", "mixed")},
        "latency_p99_ms": {mode: median(mode, "latency_p99_ms") for mode in ("single", "mixed")},
        "failed_requests": sum(p["failed"] for p in phases),
        "requests_not_sent": sum(p["requests_not_sent"] for p in phases),
        "rss_after_start_bytes": memory[0]["rss_bytes"],
        "rss_after_all_tasks_bytes": memory[-1]["rss_bytes"],
        "tasks_sharing_the_backbone_within_2x_of_artifact": sum(
            m["rss_growth_bytes"] <= 2 * max(m["artifact_bytes"], 1) for m in shared),
        "second_copies_within_2x_of_artifact": sum(
            m["rss_growth_second_copy_bytes"] <= 2 * max(m["artifact_bytes"], 1) for m in shared),
        "tasks_whose_added_tensors_are_within_2x_of_artifact": sum(
            m["added_bytes"] <= 2 * max(m["artifact_bytes"], 1) for m in shared),
        "tasks_sharing_the_backbone": len(shared),
    }


def print_phase(p: dict) -> None:
    print(f"round {p['round']} {p['mode']:6s}: {p['texts_per_s']:8.1f} texts/s  p50 {p['latency_p50_ms']:7.1f} ms  "
          f"p99 {p['latency_p99_ms']:7.1f} ms  failed {p['failed']}  not sent {p['requests_not_sent']}  "
          f"mean batch {p['mean_batch_size']}", flush=True)
    if "texts_per_s_by_task" in p:
        print("    by task: " + ", ".join(f"{t} {v:.1f}" for t, v in p["texts_per_s_by_task"].items()), flush=True)


def print_summary(s: dict, memory: list[dict]) -> None:
    print(f"\nmixed / single throughput: {s['throughput_ratio_mixed_over_single']} (median {s['throughput_ratio_median']})")
    print(f"failed requests: {s['failed_requests']}, not sent: {s['requests_not_sent']}")
    print(f"\n{'task':18s} {'method':14s} {'artifact':>12s} {'added tensors':>14s} {'RSS growth':>12s} "
          f"{'2nd copy':>12s} {'own model':>12s}")
    for m in memory:
        growth, second = ("(start)", "") if m["rss_growth_bytes"] is None else (
            f"{m['rss_growth_bytes'] / 1024:.0f} KiB", f"{m['rss_growth_second_copy_bytes'] / 1024:.0f} KiB")
        print(f"{m['task']:18s} {str(m['method']):14s} {m['artifact_bytes'] / 1024:9.0f} KiB "
              f"{m['added_bytes'] / 1024:10.0f} KiB {growth:>12s} {second:>12s} {m['own_model_bytes'] / 2**20:9.1f} MiB")
    print(f"RSS after start {s['rss_after_start_bytes'] / 2**20:.0f} MiB, after all tasks "
          f"{s['rss_after_all_tasks_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
