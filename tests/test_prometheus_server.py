"""A real Prometheus server scrapes a real Keras `fit` with GPUWatch's endpoint, and a real
Pushgateway gets a finished run's final figures. The servers are Debian's `prometheus` and
`prometheus-pushgateway`, on the loopback address, with temporary configurations."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
from prometheus_tools import free_port, library, program, serve, stop
from waiting import wait_until

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.judging.data_wait import LoopTotals
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import NVML, Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

library("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from gpu_watch.export import Exports, Prometheus  # noqa: E402

STEPS = 8


def busy_gpu() -> FakeGPU:
    return FakeGPU(name="NVIDIA H100 80GB HBM3", util_pct=85.0, power_w=250.0,
                   processes=[FakeProcess(used_mib=4000.0, sm_util_pct=80.0)])


def model_and_data():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    return model, rng.random((STEPS * 16, 8), dtype=np.float32), rng.random(
        (STEPS * 16, 1), dtype=np.float32)


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


class WhilePrometheusScrapes(keras.callbacks.Callback):
    """Placed after GPUWatch: at each epoch end, waits until Prometheus has scraped the figures
    of that epoch, and keeps the endpoint's text."""

    def __init__(self, watch: GPUWatch, prometheus: str) -> None:
        super().__init__()
        self.watch = watch
        self.prometheus = prometheus
        self.text = ""
        self.seen: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        monitor = self.watch.monitor
        run = monitor.run_dir.name
        url = wait_until(lambda: monitor.exports.exporters and monitor.exports.exporters[0].url,
                         "the endpoint", every_s=0.2)
        with urllib.request.urlopen(url, timeout=5) as response:
            self.text = response.read().decode()
        steps = (epoch + 1) * STEPS

        def scraped():
            found = api(self.prometheus, "/api/v1/query",
                        query=f'gpu_watch_steps_total{{run="{run}"}}')["result"]
            return found and float(found[0]["value"][1]) >= steps and found

        scrape = wait_until(scraped, f"a scrape after epoch {epoch}", every_s=0.2)
        self.seen.append(float(scrape[0]["value"][1]))


def test_a_real_prometheus_scrapes_a_real_fit(tmp_path):
    prometheus, promtool = program("prometheus"), program("promtool")
    metrics_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
        "scrape_configs:\n  - job_name: gpu_watch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    base = f"http://127.0.0.1:{web_port}"
    server = serve([prometheus, f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{web_port}"],
                   f"{base}/-/ready", tmp_path / "prometheus.log")
    try:
        gpu = busy_gpu()
        watch = GPUWatch(log_dir=tmp_path / "logs", plot=False, verbose=0,
                         nvml=FakeNVML([gpu], step_s=0.05),
                         export=Prometheus(port=metrics_port))
        scrapes = WhilePrometheusScrapes(watch, base)
        model, x, y = model_and_data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GPUWatchWarning)  # training on the CPU: it says so
            model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[watch, scrapes])
        run = watch.run_dir.name
        assert scrapes.seen == [STEPS, 2 * STEPS]
        series = api(base, "/api/v1/series", **{"match[]": f'{{run="{run}"}}'})
        names = {s["__name__"] for s in series}
        assert {"gpu_watch_gpu_utilization_ratio", "gpu_watch_training_gpu_utilization_ratio",
                "gpu_watch_gpu_memory_used_bytes", "gpu_watch_gpu_energy_joules_total",
                "gpu_watch_steps_total", "gpu_watch_compute_seconds_total",
                "gpu_watch_data_wait_seconds_total", "gpu_watch_loop_seconds_total",
                "gpu_watch_verdict", "gpu_watch_run_info", "gpu_watch_run_status",
                "gpu_watch_cause"} <= names
        # TensorFlow reads arrays inside the step: the wait is sampled from the stacks, and a
        # short fit gives a share only from enough samples (more on a loaded machine, whose
        # fit runs longer): the ratio is served once known, and only then.
        known = load_run(watch.run_dir).info["wait"]["fraction"] is not None
        assert ("gpu_watch_data_wait_ratio" in names) == known
        util = next(s for s in series if s["__name__"] == "gpu_watch_gpu_utilization_ratio")
        assert util["UUID"] == gpu.uuid and util["gpu"] == "0" and util["rank"] == "0"
        assert util["job_id"] == run and "GPU_I_ID" not in util  # an empty label is none
        assert util["backend"] == "tensorflow" and util["job"] == "gpu_watch"
        assert util["instance"] == f"127.0.0.1:{metrics_port}"
        # TensorFlow here has no GPU: the verdict Prometheus stored says so.
        verdict = api(base, "/api/v1/query", query=(
            f'last_over_time(gpu_watch_verdict{{run="{run}",'
            f'gpu_watch_verdict="cpu_fallback"}}[1m])'))["result"]
        assert [float(v["value"][1]) for v in verdict] == [1.0]
        assert watch.monitor.record.verdict == "cpu_fallback"
        check = subprocess.run([promtool, "check", "metrics"], input=scrapes.text,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        stop(server)


def test_a_real_pushgateway_gets_the_final_figures(tmp_path):
    pushgateway = program("prometheus-pushgateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve([pushgateway, f"--web.listen-address=127.0.0.1:{port}",
                    "--persistence.file="],  # Debian's default keeps groups in a shared file
                   f"{base}/-/ready", tmp_path / "pushgateway.log")
    try:
        watch = GPUWatch(log_dir=tmp_path / "logs", plot=False, verbose=0,
                         nvml=FakeNVML([busy_gpu()], step_s=0.05),
                         export=Prometheus(port=None, pushgateway=f"127.0.0.1:{port}"))
        model, x, y = model_and_data()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[watch])
            assert watch.monitor.exports.wait(20)
        assert not [w for w in caught if "Pushgateway" in str(w.message)]
        run = watch.run_dir.name
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(
                response.read().decode())}

        def pushed(name):
            return {s.labels.get("gpu_watch_run_status", s.name): s.value
                    for s in families[name].samples
                    if s.labels.get("run") == run and s.labels.get("job") == "gpu_watch"}

        assert pushed("gpu_watch_steps") == {"gpu_watch_steps_total": 2 * STEPS}
        status = pushed("gpu_watch_run_status")
        assert status["completed"] == 1 and status["running"] == 0
    finally:
        stop(server)


def exports_of(info: dict, devices, target) -> Exports:
    """A run's exports driven by hand: no training needed to serve or push its figures."""
    base = {"run_name": "exp1-rank0", "job_id": "exp1", "rank": 0, "world_size": 2,
            "backend": "torch", "status": "running", "gpu_watch_version": "test",
            "writer": {"host": "node-a"}}
    return Exports([target], RunRecord.from_json({**base, **info}), devices)


def test_two_runs_of_one_name_on_two_hosts_stay_two_pushgateway_groups(tmp_path):
    pushgateway = program("prometheus-pushgateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve([pushgateway, f"--web.listen-address=127.0.0.1:{port}",
                    "--persistence.file="],  # Debian's default keeps groups in a shared file
                   f"{base}/-/ready", tmp_path / "pushgateway.log")
    try:
        target = Prometheus(port=None, pushgateway=f"127.0.0.1:{port}")
        for host in ("node-a", "node-b"):
            exports = exports_of({"writer": {"host": host}}, [], target)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                exports.finish(RunRecord(status="completed"))
                assert exports.wait(20)
            assert not caught, [str(w.message) for w in caught]
        groups = api(base, "/api/v1/metrics")
        keys = sorted((g["labels"]["host"], g["labels"]["run"], g["labels"]["job_id"])
                      for g in groups)
        assert keys == [("node-a", "exp1-rank0", "exp1"), ("node-b", "exp1-rank0", "exp1")]
        # The documented clean-up: one DELETE per group, by its grouping key.
        request = urllib.request.Request(
            f"{base}/metrics/job/gpu_watch/job_id/exp1/run/exp1-rank0/rank/0/host/node-a",
            method="DELETE")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        # 202: the Pushgateway deletes the group after it answers, in its own time.
        wait_until(lambda: len(api(base, "/api/v1/metrics")) < 2, "the group's deletion")
        assert [g["labels"]["host"] for g in api(base, "/api/v1/metrics")] == ["node-b"]
    finally:
        stop(server)


def dcgm_exporter_text(whole: str, parent: str) -> str:
    """A scrape of dcgm-exporter on node1 as it labels a series in Kubernetes: the host's GPU
    number (`gpu`, `device`), `UUID` (a MIG instance's parent's, with `GPU_I_ID`), `Hostname`
    and the pod using the GPU. Our GPUs, a MIG instance another pod uses, a GPU no one uses."""
    model = 'modelName="NVIDIA H100 80GB HBM3",Hostname="node1"'
    ours = 'container="trainer",namespace="ml",pod="exp1-worker-0"'
    mig = 'GPU_I_PROFILE="1g.10gb"'
    rows = [
        (f'gpu="3",UUID="{whole}",device="nvidia3",{model},{ours}', 0.81),
        (f'gpu="5",UUID="{parent}",device="nvidia5",{model},{mig},GPU_I_ID="1",{ours}', 0.42),
        (f'gpu="5",UUID="{parent}",device="nvidia5",{model},{mig},GPU_I_ID="0",'
         'container="other",namespace="ml",pod="someone-else"', 0.9),
        (f'gpu="6",UUID="GPU-not-ours",device="nvidia6",{model}', 0.0),
    ]
    name = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    return (f"# HELP {name} Ratio of time the graphics engine is active.\n"
            f"# TYPE {name} gauge\n"
            + "".join(f"{name}{{{labels}}} {value}\n" for labels, value in rows))


class _Static(BaseHTTPRequestHandler):
    text = ""

    def do_GET(self):  # noqa: N802
        body = self.text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_dcgm_exporter_series_joins_gpu_watch_one_series_per_gpu(tmp_path, monkeypatch):
    """A whole GPU (the host's GPU 3, the container's 0) and a MIG instance (GPU instance 1 of
    the host's GPU 5): dcgm-exporter's series and GPUWatch's join on the labels both write,
    with no renaming, and each GPU of the training gives exactly one series."""
    prometheus = program("prometheus")
    for name, value in (("KUBERNETES_SERVICE_HOST", "10.0.0.1"), ("NODE_NAME", "node1"),
                        ("POD_NAMESPACE", "ml"), ("POD_NAME", "exp1-worker-0"),
                        ("CONTAINER_NAME", "trainer")):
        monkeypatch.setenv(name, value)  # what the downward API gives a pod
    mig = FakeGPU(uuid="MIG-5c9f2f4e-59a8-5b5c-8bcb-1b1e3d1e0a01")
    whole, parent = FakeGPU(minor_number=3), FakeGPU(minor_number=5,
                                                     mig_devices=[None, mig])
    nvml = NVML(FakeNVML([whole, parent]))
    devices = [nvml.all_devices()[0], *nvml.devices(mig.uuid)]
    assert (devices[1].parent_uuid, devices[1].gpu_instance_id) == (parent.uuid, 1)
    metrics_port, dcgm_port, web_port = free_port(), free_port(), free_port()
    _Static.text = dcgm_exporter_text(whole.uuid, parent.uuid)
    dcgm = ThreadingHTTPServer(("127.0.0.1", dcgm_port), _Static)
    threading.Thread(target=dcgm.serve_forever, daemon=True).start()
    exports = exports_of({}, devices, Prometheus(port=metrics_port))
    exports.tick([Reading(1.0, d.nvml_index, util_pct=80.0, judged_util_pct=60.0)
                  for d in devices], LoopTotals(10, 1.0, 0.2, 0.0, 0.15))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
        "scrape_configs:\n"
        f"  - job_name: gpu_watch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        "  - job_name: dcgm\n    honor_labels: true\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{dcgm_port}']\n")
    base = f"http://127.0.0.1:{web_port}"
    server = serve([prometheus, f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{web_port}"],
                   f"{base}/-/ready", tmp_path / "prometheus.log")
    join = ("DCGM_FI_PROF_GR_ENGINE_ACTIVE * on (UUID, GPU_I_ID, Hostname, namespace, pod, "
            "container) group_left (job_id, rank, gpu, minor_number) "
            "(0 * gpu_watch_training_gpu_utilization_ratio + 1)")
    try:
        def joined():
            up = api(base, "/api/v1/query", query="up")["result"]
            return len(up) == 2 and all(u["value"][1] == "1" for u in up) and api(
                base, "/api/v1/query", query=join)["result"]

        result = wait_until(joined, "both targets scraped and joined", every_s=0.2)
    finally:
        stop(server)
        exports.finish(RunRecord(status="completed"))
        dcgm.shutdown()
        dcgm.server_close()
    rows = sorted((r["metric"]["UUID"], r["metric"].get("GPU_I_ID"), r["metric"]["device"],
                   r["metric"]["minor_number"], r["metric"]["gpu"], r["metric"]["job_id"],
                   float(r["value"][1])) for r in result)
    assert rows == sorted([
        (whole.uuid, None, "nvidia3", "3", "0", "exp1", 0.81),
        (parent.uuid, "1", "nvidia5", "5", "1", "exp1", 0.42),
    ])
