#!/usr/bin/env python3
"""Data at scale: preparing text with bounded memory, and starting the trainer on a large shard set; prints JSON.

1. prepare: writes `--text-mb` MB of synthetic English-like JSONL (documents of about 300 words; generated, see
   tests/unit/trainer/english_like.py), trains a byte-level BPE on a sample, and runs
   `python -m llmtrain_trainer.prepare --workers N` on it in one pass, sampling the whole process tree's RSS
   (parent + workers, from /proc every 0.2 s). It also prepares a `--text-mb / 5` corpus the same way: equal peak
   memory for 5x the input is what "bounded" means here.
2. startup: builds a `--shard-gb` GiB shard set (uint16, 256 MiB shards, sidecars and manifest as prepare writes
   them). The shard files are sparse (`truncate`, all zeros: no disk used, which the machine might not have); the
   trainer cannot tell, since it never reads a shard whole. In a fresh process it measures opening the set
   (load_tokens) and drawing 10 global batches: time, RSS and bytes read through read(2) (/proc/self/io rchar).
   For contrast it times the same files as bare .bin shards without sidecars, whose ids must be scanned once.
   Then it runs the real trainer (tiny preset, 2 steps) on the set and on synthetic data: wall time and peak RSS.

    PYTHONPATH=contract:trainer_image ~/.cache/llmtrain/venv/bin/python bench/data_scale.py --out /tmp/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "unit" / "trainer"), str(REPO / "trainer_image"), str(REPO / "contract")]

from english_like import english_like, train_tokenizer  # noqa: E402

SHARD_BYTES = 256 << 20


def tree_rss(root: int) -> int:
    """Summed VmRSS (bytes) of `root` and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_sampled(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd; wall time, CPU time (its whole tree), peak summed RSS of its process tree, its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_tree_rss_mb": round(peak / 1e6, 1),
        "stdout": out,
        "stderr": err,
    }


def write_corpus(path: Path, megabytes: float) -> int:
    """JSONL of ~300-word documents: a 10 MB block of distinct documents, repeated (generating text is slower than
    tokenising it; repetition does not change the tokenizer's work)."""
    target = int(megabytes * 1e6)
    block, size, seed = [], 0, 0
    while size < min(target, 10_000_000):
        line = json.dumps({"text": english_like(300, seed=seed)}) + "\n"
        block.append(line)
        size += len(line.encode())
        seed += 1
    written = 0
    with path.open("w") as f:
        while written < target:
            for line in block:
                f.write(line)
                written += len(line.encode())
                if written >= target:
                    break
    return written


def bench_prepare(work: Path, text_mb: float, workers: int, chunk_mb: float) -> dict:
    tokenizer = train_tokenizer(work / "tokenizer.json", vocab_size=4096)
    results = {}
    for label, mb in (("small", text_mb / 5), ("full", text_mb)):
        corpus = work / f"corpus-{label}.jsonl"
        t0 = time.perf_counter()
        size = write_corpus(corpus, mb)
        gen_s = time.perf_counter() - t0
        out = work / f"shards-{label}"
        cmd = [sys.executable, "-m", "llmtrain_trainer.prepare", "--tokenizer", tokenizer, "--out", str(out)]
        cmd += ["--workers", str(workers), "--chunk-mb", str(chunk_mb), str(corpus)]
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'trainer_image'}:{REPO / 'contract'}"}
        run = run_sampled(cmd, env)
        summary = json.loads(run["stdout"])
        results[label] = {
            "input_bytes": size,
            "generate_s": round(gen_s, 1),
            "wall_s": run["wall_s"],
            "input_mb_per_s": round(size / 1e6 / run["wall_s"], 2),
            "cpu_s": run["cpu_s"],
            "input_mb_per_cpu_s": round(size / 1e6 / run["cpu_s"], 2),
            "peak_tree_rss_mb": run["peak_tree_rss_mb"],
            "shards": summary["shards"],
            "tokens": summary["tokens"],
            "dtype": summary["dtype"],
            "progress_tail": run["stderr"].strip().splitlines()[-1][-120:],
        }
        corpus.unlink()
    results["workers"] = workers
    results["chunk_mb"] = chunk_mb
    return results


def build_sparse_set(root: Path, gib: float, vocab: int) -> dict:
    from llmtrain_trainer.data import MANIFEST, MANIFEST_FORMAT, SHARD_FORMAT, sidecar_path

    root.mkdir(parents=True, exist_ok=True)
    total = int(gib * (1 << 30))
    entries, k = [], 0
    while total > 0:
        size = min(SHARD_BYTES, total)
        name = f"shard-{k:05d}.bin"
        with (root / name).open("wb") as f:
            f.truncate(size)
        meta = {"file": name, "chunk": k, "dtype": "uint16", "tokens": size // 2, "maxId": 0, "vocabSize": vocab}
        sidecar_path(root / name).write_text(json.dumps({"format": SHARD_FORMAT, **meta}))
        entries.append(meta)
        total -= size
        k += 1
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": True,
        "chunks": k,
        "doneChunks": list(range(k)),
        "shards": entries,
        "tokens": sum(e["tokens"] for e in entries),
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    return {"shards": k, "bytes": int(gib * (1 << 30)), "tokens": manifest["tokens"]}


OPEN_PROBE = """
import json, sys, time
from pathlib import Path
def status():
    d = dict(l.split(':', 1) for l in Path('/proc/self/status').read_text().splitlines())
    io = dict(l.split(': ') for l in Path('/proc/self/io').read_text().splitlines())
    return int(d['VmRSS'].split()[0]) * 1024, int(d['VmHWM'].split()[0]) * 1024, int(io['rchar'])
import numpy
from llmtrain_trainer.config import DataConfig
from llmtrain_trainer.data import BatchSampler, load_tokens
rss0, _, read0 = status()
t0 = time.perf_counter()
stream = load_tokens(DataConfig(source=sys.argv[1], seqLen=2048), vocab_size=32000, seed=0)
t1 = time.perf_counter()
sampler = BatchSampler(stream, 2048, 512, dp_rank=0, dp_size=16, seed=0)
for _ in range(10):
    sampler.next_batch()
t2 = time.perf_counter()
rss, hwm, read = status()
print(json.dumps({
    "open_s": round(t1 - t0, 4), "ten_batches_s": round(t2 - t1, 4), "rss_before_mb": round(rss0 / 1e6, 1),
    "rss_after_mb": round(rss / 1e6, 1), "peak_rss_mb": round(hwm / 1e6, 1), "read_syscall_bytes": read - read0,
}))
"""


def bench_startup(work: Path, gib: float, trainer_steps: int) -> dict:
    shard_dir = work / "shards-10g"
    built = build_sparse_set(shard_dir, gib, vocab=32000)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'trainer_image'}:{REPO / 'contract'}"}
    probe = [sys.executable, "-c", OPEN_PROBE]
    with_sidecars = json.loads(subprocess.run([*probe, str(shard_dir)], env=env, capture_output=True, text=True,
                                              check=True).stdout)  # fmt: skip
    bare_dir = work / "bare-10g"
    bare_dir.mkdir()
    for f in sorted(shard_dir.glob("*.bin")):
        os.link(f, bare_dir / f.name)  # the same bytes, no sidecars: read as data.binDtype, ids scanned
    bare = json.loads(subprocess.run([*probe, f"{bare_dir}/*.bin"], env=env, capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip

    trainer = {}
    for label, source in (("shards_10g", str(shard_dir)), ("synthetic", "synthetic")):
        config = {
            "jobName": "bench-data",
            "model": {"preset": "tiny"},
            "data": {"source": source, "seqLen": 256},
            "precision": "fp32",
            "training": {"steps": trainer_steps, "globalBatchSize": 8, "microBatchSize": 8},
            "metrics": {"port": 0},
            "logging": {"interval": 1, "json": True},
        }
        path = work / f"trainer-{label}.json"
        path.write_text(json.dumps(config))
        run = run_sampled(
            [sys.executable, "-m", "llmtrain_trainer", "--config", str(path)],
            {**env, "LLMTRAIN_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "LLMTRAIN_TERMINATION_LOG": "/dev/null"},
        )
        trainer[label] = {k: run[k] for k in ("wall_s", "cpu_s", "peak_tree_rss_mb")}
    return {"set": built, "sparse_files": True, "with_sidecars": with_sidecars, "bare_bins_scanned": bare,
            "trainer_run": trainer, "trainer_steps": trainer_steps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-mb", type=float, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-mb", type=float, default=16)
    parser.add_argument("--shard-gb", type=float, default=10, help="GiB of (sparse) shards for the startup test")
    parser.add_argument("--trainer-steps", type=int, default=2)
    parser.add_argument("--skip", choices=["prepare", "startup"], action="append", default=[])
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory, removed)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        result = {
            "load_average_at_start": os.getloadavg(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            },
        }
        if "prepare" not in args.skip:
            result["prepare"] = bench_prepare(work, args.text_mb, args.workers, args.chunk_mb)
        if "startup" not in args.skip:
            result["startup"] = bench_startup(work, args.shard_gb, args.trainer_steps)
    result["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
