"""`riad-edge serve`: records like `riad-edge infer`, micro-batching, overload, auth, metrics, reload, shutdown."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import gc
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from PIL import Image
from test_edge import SIZE, _write_toy_unet

import edge.serve_trace
from edge.cli import main
from edge.metadata import file_sha256, metadata_path, read_metadata, update_metadata
from edge.records import check_record
from edge.runner import Runner
from edge.serve import ServeSettings, Service, _Request
from edge.serve_api import OPENAPI
from edge.serve_trace import AccessLog

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _write_toy_unet(tmp_path_factory.mktemp("serve"))


def _png(seed: int, size=(SIZE, SIZE)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class CountingRunner:
    """A `Runner` wrapper that counts model calls and their batch sizes, optionally slow."""

    def __init__(self, runner, delay_s: float = 0.0):
        self.runner, self.delay_s, self.calls = runner, delay_s, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, images):
        self.calls.append(len(images))
        time.sleep(self.delay_s)
        return self.runner(images)


def _run(coroutine):
    return asyncio.run(coroutine)


async def _client(service: Service) -> TestClient:
    client = TestClient(TestServer(service.app()))
    await client.start_server()
    return client


def test_records_equal_riad_edge_infer_and_concurrent_requests_share_a_call(model, tmp_path):
    images = [tmp_path / f"{i}.png" for i in range(6)]
    for i, path in enumerate(images):
        path.write_bytes(_png(i))
    infer = CliRunner().invoke(main, ["infer", str(model), *map(str, images)])
    expected = [json.loads(line) for line in infer.stdout.splitlines()]
    counting = CountingRunner(Runner.open(model), delay_s=0.2)

    async def scenario():
        client = await _client(Service(lambda: counting, ServeSettings(max_batch=8, max_wait_ms=50)))
        try:
            answers = await asyncio.gather(*[client.post(f"/predict?name={p}", data=p.read_bytes()) for p in images])
            return [(a.status, await a.json()) for a in answers]
        finally:
            await client.close()

    answers = _run(scenario())
    assert all(status == 200 for status, _ in answers)
    for (_, record), want in zip(answers, expected):
        assert record.pop("timing_ms") > 0
        assert record.pop("model")["sha256"] == file_sha256(model)  # the model that scored it
        check_record(record)  # docs/records.md
        assert record.keys() == want.keys() and record["anomalous"] == want["anomalous"]
        assert record["score"] == pytest.approx(want["score"], abs=1e-6)
    assert sum(counting.calls) == 6 and len(counting.calls) < 6  # micro-batched


def test_overload_answers_503_and_bad_images_400(model):
    slow = CountingRunner(Runner.open(model), delay_s=0.5)

    async def scenario():
        client = await _client(Service(lambda: slow, ServeSettings(max_batch=1, max_wait_ms=1, queue_size=1)))
        try:
            answers = await asyncio.gather(*[client.post("/predict", data=_png(i)) for i in range(5)])
            statuses = sorted(a.status for a in answers)
            bad = await client.post("/predict?name=broken.png", data=b"not an image")
            return statuses, bad.status, await bad.json()
        finally:
            await client.close()

    statuses, bad_status, bad = _run(scenario())
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    assert bad_status == 400 and bad["path"] == "broken.png" and "cannot read image" in bad["error"]


def test_token_health_ready_metrics_maps_and_reload(model):
    opened = []

    def open_runner():
        opened.append(Runner.open(model))
        return opened[-1]

    async def scenario():
        client = await _client(Service(open_runner, ServeSettings(token="s3cret")))
        auth = {"Authorization": "Bearer s3cret"}
        try:
            results = {
                "health": (await client.get("/health")).status,
                "ready": (await client.get("/ready")).status,
                "no_token": (await client.post("/predict", data=_png(0))).status,
                "metrics_no_token": (await client.get("/metrics")).status,
            }
            with_map = await client.post("/predict?map=png", data=_png(0), headers=auth)
            results["map"] = await with_map.json()
            values = await client.post("/predict?map=array", data=_png(0), headers=auth)
            results["values"] = await values.json()
            results["reload"] = (await client.post("/reload", headers=auth)).status
            results["after_reload"] = (await client.post("/predict", data=_png(0), headers=auth)).status
            results["metrics"] = await (await client.get("/metrics", headers=auth)).text()
            return results
        finally:
            await client.close()

    results = _run(scenario())
    assert (results["health"], results["ready"], results["no_token"], results["metrics_no_token"]) == (
        200,
        200,
        401,
        401,
    )
    png = Image.open(io.BytesIO(base64.b64decode(results["map"]["map_png"])))
    assert png.size == (SIZE, SIZE) and png.mode == "L"
    assert np.asarray(results["values"]["map_values"]).shape == (SIZE, SIZE)
    assert results["reload"] == 200 and results["after_reload"] == 200 and len(opened) == 2
    metrics = results["metrics"]
    # three predictions and the reload answered 200
    assert 'riad_requests_total{status="200"} 4.0' in metrics and 'riad_requests_total{status="401"} 2.0' in metrics
    assert (
        "riad_request_seconds_bucket" in metrics and "riad_queue_depth" in metrics and "riad_verdicts_total" in metrics
    )


def _start_server(command: list[str], env=None) -> tuple[subprocess.Popen, str]:
    """Starts a serve process; returns it and its URL (read from its log)."""
    server = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
    line = ""
    deadline = time.time() + 60
    while "http://" not in line and time.time() < deadline:
        line = server.stderr.readline()
    assert "http://" in line, line
    return server, line[line.index("http://") :].split()[0].rstrip("/")


def _post_in_two_parts(url: str, body: bytes, between) -> tuple[int, dict]:
    """POSTs `body`, calling `between()` after the headers and half the body: the request is in flight then."""
    import http.client
    from urllib.parse import urlparse

    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    connection.send(body[: len(body) // 2])
    between()
    connection.send(body[len(body) // 2 :])
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read())


def test_the_command_binds_loopback_and_finishes_in_flight_requests_on_sigterm(model):
    env = dict(os.environ, RIAD_SERVE_TOKEN="")
    command = [sys.executable, "-m", "edge.cli", "serve", str(model), "--port", "0"]
    server, url = _start_server(command, env)
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        answers, arrived = [], threading.Barrier(4)
        requests = [
            threading.Thread(target=lambda: answers.append(_post_in_two_parts(url, _png(1), arrived.wait)))
            for _ in range(3)
        ]
        for thread in requests:
            thread.start()
        arrived.wait(timeout=30)  # every request has sent its headers and half its body ...
        time.sleep(0.3)  # ... and its handler is reading the rest
        server.send_signal(signal.SIGTERM)
        for thread in requests:
            thread.join(timeout=30)
        assert server.wait(timeout=30) == 0
        assert [status for status, _ in answers] == [200, 200, 200]
    finally:
        server.kill()


def test_sigterm_during_a_long_request_exits_within_the_shutdown_timeout(model):
    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_serve import CountingRunner\n"
        "from edge.cli_options import setup_logging\n"
        "from edge.runner import Runner\n"
        "from edge.serve import ServeSettings, serve\n"
        "setup_logging()\n"
        f"slow = CountingRunner(Runner.open({str(model)!r}), delay_s=120)\n"
        "serve(lambda: slow, ServeSettings(), '127.0.0.1', 0, shutdown_timeout=1.0)\n"
    )
    server, url = _start_server([sys.executable, "-c", script])
    try:
        threading.Thread(target=lambda: _post_in_two_parts(url, _png(2), lambda: None), daemon=True).start()
        time.sleep(1.0)  # the model call (120 s) has started
        sent = time.time()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        assert time.time() - sent < 10
        assert "still running" in server.stderr.read()
    finally:
        server.kill()


def _post(url: str, body: bytes):
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


def test_a_missing_execution_provider_is_named(model, tmp_path):
    import onnxruntime as ort

    image = tmp_path / "x.png"
    image.write_bytes(_png(3))
    on_cpu = CliRunner().invoke(main, ["infer", str(model), str(image), "--provider", "cpu"])
    assert on_cpu.exit_code == 0 and json.loads(on_cpu.stdout)["score"] >= 0
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA; the refusal cannot be shown here")
    missing = CliRunner().invoke(main, ["infer", str(model), str(image), "--provider", "cuda"])
    assert (
        missing.exit_code == 6
        and "CPUExecutionProvider" in missing.output
        and "CUDAExecutionProvider" in missing.output
    )


def test_bursts_past_the_queue_get_503_and_leave_memory_flat(model):
    import aiohttp

    slow = CountingRunner(Runner.open(model), delay_s=0.02)
    body = _png(7)

    async def burst(session, url: str, count: int) -> list[int]:
        answers = await asyncio.gather(*[session.post(url, data=body) for _ in range(count)])
        for answer in answers:
            await answer.read()
        return [answer.status for answer in answers]

    async def scenario():
        server = TestServer(Service(lambda: slow, ServeSettings(max_batch=2, max_wait_ms=1, queue_size=4)).app())
        await server.start_server()
        url = str(server.make_url("/predict"))
        try:
            async with aiohttp.ClientSession() as session:  # TestClient would keep every response
                await burst(session, url, 60)  # warm: the first burst allocates what every later one reuses
                gc.collect()
                tracemalloc.start()
                statuses, traced, alive = [], [], []
                for _ in range(5):
                    statuses += await burst(session, url, 60)
                    gc.collect()
                    traced.append(tracemalloc.get_traced_memory()[0])
                    alive.append(sum(isinstance(o, _Request) for o in gc.get_objects()))
                tracemalloc.stop()
                return statuses, traced[1:], alive
        finally:
            await server.close()

    statuses, traced, alive = _run(scenario())
    assert set(statuses) == {200, 503} and statuses.count(503) > statuses.count(200)  # the queue held 4
    assert alive == [0] * 5  # no request outlives its answer
    # Keep-alive connections hold their last request; beyond that, 240 more requests (750 kB of
    # images) leave the traced memory where it was.
    assert max(traced) - min(traced) < 128 * 1024, traced


def test_limits_malformed_requests_and_a_failed_reload_are_answers_counted_in_metrics(model, tmp_path):
    big = io.BytesIO()
    Image.fromarray(np.zeros((5000, 9000), np.uint8)).save(big, "PNG")  # 45 MP in about 60 kB
    opened = []

    def open_runner():
        if opened:
            raise ValueError("model.onnx: not a model")  # the reload finds a broken file
        opened.append(1)
        return Runner.open(model)

    settings = ServeSettings(max_body_mb=1, max_pixels=40_000_000)

    async def scenario():
        client = await _client(Service(open_runner, settings))
        try:
            answers = {}
            answers["body"] = await client.post("/predict", data=b"x" * (2 * 2**20))
            answers["pixels"] = await client.post("/predict?name=big.png", data=big.getvalue())
            answers["no boundary"] = await client.post(
                "/predict", data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
            )
            broken = b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nabc"  # no closing boundary
            answers["broken part"] = await client.post(
                "/predict", data=broken, headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
            answers["reload"] = await client.post("/reload")
            answers["after"] = await client.post("/predict", data=_png(4))
            bodies = {k: (a.status, await a.json()) for k, a in answers.items()}
            metrics = await (await client.get("/metrics")).text()
            return bodies, metrics
        finally:
            await client.close()

    answers, metrics = _run(scenario())
    assert answers["body"][0] == 413 and "larger than 1 MB" in answers["body"][1]["error"]
    assert answers["pixels"][0] == 413 and "5000 x 9000 px" in answers["pixels"][1]["error"]
    assert answers["no boundary"][0] == 400 and answers["broken part"][0] == 400
    assert answers["reload"][0] == 500 and "not a model" in answers["reload"][1]["error"]
    assert answers["after"][0] == 200  # the old model keeps serving
    for status, count in (("413", 2), ("400", 2), ("500", 1)):
        assert f'riad_requests_total{{status="{status}"}} {count}.0' in metrics, metrics


def test_thirty_concurrent_50_mb_uploads_keep_the_service_small(model):
    command = [sys.executable, "-m", "edge.cli", "serve", str(model), "--port", "0", "--queue", "4"]
    server, url = _start_server(command, dict(os.environ, RIAD_SERVE_TOKEN=""))
    body = np.random.default_rng(0).integers(0, 255, 50 * 2**20, dtype=np.uint8).tobytes()  # not an image
    statuses = []

    def upload():
        request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                statuses.append(answer.status)
        except urllib.error.HTTPError as err:
            statuses.append(err.code)
        except OSError:  # refused before the body was read: the server closed while we were still sending
            statuses.append("closed")

    try:
        threads = [threading.Thread(target=upload) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
        print(f"30 x 50 MB against --queue 4: peak resident {peak_mb:.0f} MB; answers {sorted(map(str, statuses))}")
        assert len(statuses) == 30 and 400 in statuses and set(statuses) <= {400, 503, "closed"}
        assert peak_mb < 300
    finally:
        server.kill()


# ----------------------------------------------------------------------
# Traceability: the model's identity, the access log, the API description


def _identity(path: Path, source: str, image_threshold) -> dict:
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "threshold_source": source,
        "image_threshold": image_threshold,
    }


def _model_info(metrics: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith("riad_model_info{")]


def test_answers_and_metrics_name_the_model_and_a_reload_changes_them(tmp_path, monkeypatch):
    path = _write_toy_unet(tmp_path, thresholds=None)  # not calibrated yet: scores only
    hashed = []
    monkeypatch.setattr(edge.serve_trace, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))

    async def scenario():
        client = await _client(Service(lambda: Runner.open(path), ServeSettings(), model_path=path))
        try:
            seen = {"first": await (await client.post("/predict?name=a.png", data=_png(0))).json()}
            seen["bad"] = await (await client.post("/predict?name=bad.png", data=b"not an image")).json()
            seen["metrics_before"] = await (await client.get("/metrics")).text()
            # recalibrated on the device: new thresholds inside the model file (a new sha256), and
            # the JSON beside it gone, so the metadata read has no sha256 of its own
            update_metadata(path, dataclasses.replace(read_metadata(path), thresholds={"image": 0.25, "region": 0.25}))
            metadata_path(path).unlink()
            seen["reload"] = await (await client.post("/reload")).json()
            seen["after"] = [await (await client.post("/predict", data=_png(i))).json() for i in range(3)]
            seen["metrics_after"] = await (await client.get("/metrics")).text()
            return seen
        finally:
            await client.close()

    before = _identity(path, "none", None)
    seen = _run(scenario())
    after = _identity(path, "calibrated", 0.25)
    assert after["sha256"] != before["sha256"]
    assert seen["first"]["model"] == before and seen["bad"]["model"] == before and "error" in seen["bad"]
    assert _model_info(seen["metrics_before"]) == [
        f'riad_model_info{{file="toy.onnx",image_threshold="",sha256="{before["sha256"]}",threshold_source="none"}} 1.0'
    ]
    assert seen["reload"] == {"status": "reloaded", "model": after}
    assert all(record["model"] == after and "anomalous" in record for record in seen["after"])
    assert _model_info(seen["metrics_after"]) == [
        f'riad_model_info{{file="toy.onnx",image_threshold="0.25",sha256="{after["sha256"]}",threshold_source="calibrated"}} 1.0'
    ]
    assert hashed == [path]  # hashed once, at the reload that found no sha256; never per request


ACCESS_KEYS = {
    "time",
    "client",
    "method",
    "path",
    "status",
    "image",
    "score",
    "anomalous",
    "model_sha256",
    "duration_ms",
}


def test_the_access_log_appends_one_json_line_per_request(model, tmp_path):
    import aiohttp

    access_log = tmp_path / "access.jsonl"
    access_log.write_text('{"earlier": "run"}\n')
    settings = ServeSettings(token="s3cret", access_log=str(access_log))
    auth = {"Authorization": "Bearer s3cret"}
    upload = aiohttp.FormData()
    upload.add_field("image", _png(1), filename="b.png", content_type="image/png")

    async def scenario():
        client = await _client(Service(lambda: Runner.open(model), settings))
        try:
            answers = [
                await client.post("/predict?name=a.png", data=_png(0), headers=auth),
                await client.post("/predict", data=upload, headers=auth),
                await client.post("/predict?name=broken.png", data=b"not an image", headers=auth),
                await client.post("/predict?name=c.png", data=_png(2)),  # no token
                await client.get("/metrics", headers=auth),
            ]
            return [(a.status, await a.json() if a.content_type == "application/json" else None) for a in answers]
        finally:
            await client.close()

    started = datetime.datetime.now(datetime.timezone.utc)
    answers = _run(scenario())
    earlier, *lines = access_log.read_text().splitlines()
    assert earlier == '{"earlier": "run"}'  # appended to, not truncated
    entries = [json.loads(line) for line in lines]
    assert len(entries) == len(answers) and all(entry.keys() == ACCESS_KEYS for entry in entries)
    assert [e["status"] for e in entries] == [status for status, _ in answers] == [200, 200, 400, 401, 200]
    assert [e["image"] for e in entries] == ["a.png", "b.png", "broken.png", "c.png", None]
    assert [(e["method"], e["path"]) for e in entries] == [("POST", "/predict")] * 4 + [("GET", "/metrics")]
    for entry, (_, answer) in zip(entries[:2], answers[:2]):
        assert (entry["score"], entry["anomalous"]) == (answer["score"], answer["anomalous"])
    assert all(e["score"] is None and e["anomalous"] is None for e in entries[2:])
    assert {e["model_sha256"] for e in entries} == {file_sha256(model)}
    assert {e["client"] for e in entries} == {"127.0.0.1"}
    for entry in entries:
        logged = datetime.datetime.fromisoformat(entry["time"])
        assert entry["time"].endswith("Z") and started <= logged <= datetime.datetime.now(datetime.timezone.utc)
        assert 0 < entry["duration_ms"] < 60_000


def test_the_access_log_on_stdout_is_json_lines(capsysbinary):
    AccessLog("-").write({"status": 200, "score": 0.5})
    assert capsysbinary.readouterr().out == b'{"status": 200, "score": 0.5}\n'


def test_an_access_log_that_cannot_be_opened_stops_serve_with_one_line(model, tmp_path, monkeypatch):
    def listening(*args, **kwargs):
        raise AssertionError("serve listened with an access log it could not open")

    monkeypatch.setattr("aiohttp.web.run_app", listening)
    elsewhere = tmp_path / "elsewhere.log"
    (tmp_path / "link.log").symlink_to(elsewhere)
    for target, why in (
        (tmp_path / "missing" / "access.log", "No such file"),
        (tmp_path / "link.log", "symbolic link"),
    ):
        result = CliRunner().invoke(main, ["serve", str(model), "--port", "0", "--access-log", str(target)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 5 and len(lines) == 1, result.output
        assert lines[0].startswith(f"Error: {target}: ") and why in lines[0]
    assert not elsewhere.exists()  # nothing was written through the link


def test_the_openapi_description_names_exactly_the_routes_served(model):
    service = Service(lambda: Runner.open(model))

    async def scenario():
        client = await _client(service)
        try:
            return await (await client.get("/openapi.json")).json()
        finally:
            await client.close()

    served = _run(scenario())
    routes = {(r.method.lower(), r.resource.canonical) for r in service.app().router.routes() if r.method != "HEAD"}
    described = {(method, path) for path, operations in OPENAPI["paths"].items() for method in operations}
    assert served == OPENAPI and routes == described
    assert set(OPENAPI["paths"]["/predict"]["post"]["responses"]) >= {"200", "400", "413", "500", "503"}
    validator = pytest.importorskip("openapi_spec_validator")  # not a dependency; checked where it is installed
    validator.validate(OPENAPI)
