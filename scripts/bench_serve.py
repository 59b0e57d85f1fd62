"""Latency and throughput of `riad-edge serve` against `riad-edge infer` run once per image, on this CPU.

Not a test: in one run it measures

- `riad-edge infer MODEL IMAGE` as a fresh process, N times in a loop: per image, the
  start-up (Python, ONNX Runtime, model load) that a one-shot user pays every time;
- `riad-edge infer MODEL FOLDER` once on a folder of N images (start-up paid once);
- `riad-edge serve MODEL` started once on 127.0.0.1 (a free port), warmed up, then 1, 4 and
  16 concurrent clients (threads, `http.client`, one keep-alive connection each) posting the
  PNG bytes to `/predict`, `--requests` per level shared among the clients;

and prints a markdown table: p50/p99 latency in ms per image (serve: per request, as the
client sees it), images/s, and the images/s ratio to the one-shot loop. The service is
stopped with SIGTERM and its exit status checked; its own count of HTTP 503 answers is read
from `/metrics`.

    python3 -m scripts.bench_serve                                   # untrained 128x128 default-width model
    python3 -m scripts.bench_serve --model runs/x/export/riad.onnx --json-file serve_bench.json
    python3 -m scripts.bench_serve --image-size 64 --runs 3 --requests 8 --concurrency 1,4

Without `--model` the script builds the default-width RIAD detector at `--image-size` with
random weights and exports it to ONNX with riad_tf (TensorFlow needed for that step only,
about a minute); nothing is trained, latency does not depend on the weights. The images
come from `--data` (magnetic tile `.jpg` files, resized) when present, else they are
synthetic. On 2 cores the default run takes about 5 minutes (about 3 s per image at 128x128).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from edge.bench import cpu_facts
from edge.metadata import read_metadata

REPO = Path(__file__).resolve().parents[1]

RIAD_EDGE = [sys.executable, "-m", "edge.cli"]  # what the `riad-edge` entry point runs, without a shell shim
PLACEHOLDER_THRESHOLDS = {"image": 1.0, "region": 1.0}  # so records carry verdicts and regions, like a real model's


# ----------------------------------------------------------------------
# Model and images


def export_untrained(out_dir: Path, size: int) -> Path:
    """Exports the default-width RIAD detector at `size`x`size` with random weights to ONNX; returns the `.onnx`."""
    from riad_tf.benchmark import untrained_detector
    from riad_tf.config import RiadConfig
    from riad_tf.export import export_detector

    written = export_detector(
        untrained_detector(RiadConfig(image_size=(size, size))),
        out_dir,
        formats=("onnx",),
        batch=None,
        thresholds=PLACEHOLDER_THRESHOLDS,
        verify=False,
    )
    return written["onnx"]


def source_images(data: Path, count: int, size: tuple[int, int], seed: int = 0) -> tuple[list[Image.Image], str]:
    """`count` images at `size`: magnetic tile photographs from `data` if there are any, else random textures."""
    found = sorted(data.glob("*/Imgs/*.jpg"))[:count] if data.is_dir() else []
    if found:
        images = [Image.open(path).convert("RGB").resize(size[::-1], Image.BILINEAR) for path in found]
        return images, f"{len(found)} magnetic tile images from {data}, resized"
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]
    return images, f"{count} synthetic random images"


def write_images(images: list[Image.Image], folder: Path, count: int) -> list[Path]:
    """Writes `count` PNGs to `folder`, cycling through `images`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part_{i:03d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        images[i % len(images)].save(path)
    return paths


# ----------------------------------------------------------------------
# riad-edge infer


def _runtime_flags(threads: int | None) -> list[str]:
    return ["--threads", str(threads)] if threads else []


def _infer(model: Path, target: Path, threads: int | None) -> int:
    """Runs `riad-edge infer MODEL TARGET` once; returns the number of records (an error ends the benchmark)."""
    command = [*RIAD_EDGE, "-q", "infer", str(model), str(target), *_runtime_flags(threads)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or any("error" in record for record in records):
        raise SystemExit(f"riad-edge infer failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return len(records)


def infer_loop(model: Path, images: list[Path], threads: int | None) -> dict:
    """One `riad-edge infer` process per image, one after another."""
    seconds = []
    for image in images:
        start = time.perf_counter()
        _infer(model, image, threads)
        seconds.append(time.perf_counter() - start)
    return summarise("infer, one process per image", seconds, len(images), sum(seconds))


def infer_folder(model: Path, folder: Path, count: int, threads: int | None) -> dict:
    """One `riad-edge infer` process on a folder: throughput only (records come out in batches)."""
    start = time.perf_counter()
    scored = _infer(model, folder, threads)
    wall = time.perf_counter() - start
    if scored != count:
        raise SystemExit(f"riad-edge infer on {folder}: {scored} records for {count} images")
    return summarise(f"infer, one process on a folder of {count}", None, count, wall)


# ----------------------------------------------------------------------
# riad-edge serve


class Server:
    """`riad-edge serve MODEL` as a subprocess on 127.0.0.1, port chosen by the system; stderr kept for errors."""

    def __init__(self, model: Path, threads: int | None, batch_size: int, max_wait_ms: float, queue: int):
        command = [*RIAD_EDGE, "serve", str(model), "--host", "127.0.0.1", "--port", "0", *_runtime_flags(threads)]
        command += ["--batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms), "--queue", str(queue)]
        env = dict(os.environ, RIAD_SERVE_TOKEN="")
        self.process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.url = self._read_url(timeout_s=120)
        threading.Thread(target=self._drain, daemon=True).start()  # a full stderr pipe would stall the service

    def _read_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            self.lines.append(line)
            found = re.search(r"http://[\w.:\[\]]+", line)
            if found:
                return found.group(0).rstrip("/")
        self.process.kill()
        raise SystemExit("riad-edge serve did not start:\n" + "".join(self.lines[-20:]))

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def address(self) -> tuple[str, int]:
        parsed = urllib.parse.urlsplit(self.url)
        return parsed.hostname, parsed.port

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if request(self.address, "GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("riad-edge serve never became ready:\n" + "".join(self.lines[-20:]))

    def statuses(self) -> dict[str, int]:
        """The service's own count of answers by HTTP status (`/metrics`)."""
        _, text = request(self.address, "GET", "/metrics")
        found = re.findall(r'riad_requests_total\{status="(\d+)"\} ([\d.e+]+)', text.decode())
        return {status: int(float(count)) for status, count in found}

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then the exit status (None if it had to be killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None


def request(address: tuple[str, int], method: str, path: str, body: bytes | None = None, connection=None):
    """One HTTP request (on `connection` if given, else a fresh one): `(status, body bytes)`."""
    own = connection is None
    connection = connection or http.client.HTTPConnection(*address, timeout=600)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        if own:
            connection.close()


def _client(address, bodies: list[bytes], count: int, offset: int, start: threading.Barrier, results: list) -> None:
    """Posts `count` images one after another on one keep-alive connection; appends `(status, seconds)`."""
    connection = http.client.HTTPConnection(*address, timeout=600)
    start.wait()
    try:
        for i in range(count):
            began = time.perf_counter()
            status, _ = request(
                address, "POST", f"/predict?name=c{offset}_{i}", bodies[(offset + i) % len(bodies)], connection
            )
            results.append((status, time.perf_counter() - began))
    finally:
        connection.close()


def serve_level(server: Server, bodies: list[bytes], clients: int, requests: int) -> dict:
    """`clients` concurrent clients sharing `requests` (at least one each); images/s over the level's wall time."""
    per_client = max(1, -(-requests // clients))
    results: list[tuple[int, float]] = []
    start = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(target=_client, args=(server.address, bodies, per_client, i, start, results))
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ok = [seconds for status, seconds in results if status == 200]
    row = summarise(f"serve, {clients} concurrent client{'s' if clients > 1 else ''}", ok, len(ok), wall)
    row["clients"] = clients
    row["statuses"] = {str(s): sum(1 for status, _ in results if status == s) for s in sorted({s for s, _ in results})}
    return row


def bench_serve(model: Path, images: list[Path], args) -> tuple[list[dict], dict]:
    """Starts the service once, warms it up, runs each concurrency level; returns the rows and the service's facts."""
    bodies = [path.read_bytes() for path in images]
    server = Server(model, args.threads, args.batch_size, args.max_wait_ms, args.queue)
    try:
        server.wait_ready()
        for body in bodies[: args.warmup]:
            status, answer = request(server.address, "POST", "/predict?name=warmup", body)
            if status != 200:
                raise SystemExit(f"riad-edge serve answered {status} to a warm-up request: {answer[:500]!r}")
        rows = []
        for clients in args.concurrency:
            log(f"serve: {clients} concurrent client(s)")
            rows.append(serve_level(server, bodies, clients, args.requests))
        statuses = server.statuses()
    except BaseException:
        server.process.kill()
        raise
    exit_status = server.stop()
    return rows, {"url": server.url, "statuses": statuses, "sigterm_exit": exit_status}


# ----------------------------------------------------------------------
# Figures and report


def summarise(name: str, seconds: list[float] | None, images: int, wall: float) -> dict:
    """A table row: p50/p99 of the per-image `seconds` in ms (None when not measured per image) and images/s."""
    row = {"run": name, "images": images, "p50_ms": None, "p99_ms": None, "images_per_s": images / wall}
    if seconds:
        row["p50_ms"] = float(np.percentile(seconds, 50)) * 1e3
        row["p99_ms"] = float(np.percentile(seconds, 99)) * 1e3
    row["wall_s"] = wall
    return row


def table(rows: list[dict]) -> str:
    """The markdown table; the ratio is each row's images/s over the one-shot loop's."""
    base = rows[0]["images_per_s"]
    lines = ["| run | images | p50 ms | p99 ms | images/s | x one-shot loop |", "|---|--:|--:|--:|--:|--:|"]
    for row in rows:
        p50, p99 = (f"{row[k]:.0f}" if row[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
        ratio = row["images_per_s"] / base
        lines.append(f"| {row['run']} | {row['images']} | {p50} | {p99} | {row['images_per_s']:.2f} | {ratio:.2f} |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"bench_serve: {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Exported .onnx/.tflite (metadata JSON beside it).")
    parser.add_argument("--image-size", type=int, default=128, help="Without --model: size of the untrained model.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Model and images go here (default: a temp dir).")
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "magnetic_tile",
        help="Magnetic tile folder (*/Imgs/*.jpg) for the images; synthetic ones when missing.",
    )
    parser.add_argument("--distinct-images", type=int, default=8, help="Different images posted and scored.")
    parser.add_argument("--runs", type=int, default=5, help="infer processes in the loop, and images in the folder.")
    parser.add_argument("--requests", type=int, default=16, help="Requests per concurrency level (shared by clients).")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 4, 16],
        help="Comma-separated client counts.",
    )
    parser.add_argument("--warmup", type=int, default=2, help="Untimed requests before the first level.")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Runtime CPU threads (every command).")
    parser.add_argument("--batch-size", type=int, default=8, help="serve --batch-size.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="serve --max-wait-ms.")
    parser.add_argument("--queue", type=int, default=64, help="serve --queue.")
    parser.add_argument("--json-file", type=Path, default=None, help="Also write the figures here.")
    return parser.parse_args(argv)


def run(args, work: Path) -> dict:
    """Every measurement, in order; returns the report."""
    started = time.perf_counter()
    facts = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **cpu_facts()}
    model, facts["weights"] = args.model, "as given"
    if model is None:
        log(f"exporting an untrained {args.image_size}x{args.image_size} default-width model to {work}")
        model, facts["weights"] = export_untrained(work / "model", args.image_size), "untrained (random)"
    metadata = read_metadata(model)
    facts.update(model=str(model), image_size=list(metadata.image_size), widths=list(metadata.unet_widths))
    pictures, facts["images"] = source_images(args.data, args.distinct_images, metadata.image_size)
    distinct = write_images(pictures, work / "images", len(pictures))
    folder = work / "folder"
    write_images(pictures, folder, args.runs)
    facts["threads"], facts["batch_size"], facts["max_wait_ms"] = args.threads, args.batch_size, args.max_wait_ms
    log(f"infer: {args.runs} one-shot processes")
    rows = [infer_loop(model, [distinct[i % len(distinct)] for i in range(args.runs)], args.threads)]
    log(f"infer: one process on {args.runs} images")
    rows.append(infer_folder(model, folder, args.runs, args.threads))
    serve_rows, facts["serve"] = bench_serve(model, distinct, args)
    rows += serve_rows
    facts["load_average_end"], facts["seconds"] = cpu_facts()["load_average"], time.perf_counter() - started
    return {**facts, "rows": rows}


def report(result: dict) -> str:
    """The printed header lines and table."""
    serve = result["serve"]
    rejected = serve["statuses"].get("503", 0)
    return "\n".join(
        [
            f"CPU: {result['cpu']}, {result['cores']} cores ({result['usable_cores']} usable), "
            f"load average {result['load_average']} at start, {result['load_average_end']} at end",
            f"model: {result['model']} ({result['image_size'][0]}x{result['image_size'][1]}, widths {result['widths']}), "
            f"weights {result['weights']}; latency does not depend on the weights",
            f"images: {result['images']}; --threads {result['threads']}, serve --batch-size {result['batch_size']} "
            f"--max-wait-ms {result['max_wait_ms']}",
            f"service answers by status (/metrics): {serve['statuses']}; HTTP 503: {rejected}; "
            f"exit after SIGTERM: {serve['sigterm_exit']}",
            f"whole run: {result['seconds']:.0f} s",
            "",
            table(result["rows"]),
        ]
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.runs < 1 or args.requests < 1 or min(args.concurrency) < 1:
        raise SystemExit("--runs, --requests and --concurrency must be positive")
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as temp:
        work = args.work_dir or Path(temp)
        result = run(args, work)
    print(report(result), flush=True)
    if args.json_file:
        args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    if result["serve"]["sigterm_exit"] != 0:
        raise SystemExit(f"riad-edge serve exited with {result['serve']['sigterm_exit']} after SIGTERM")


if __name__ == "__main__":
    main()
