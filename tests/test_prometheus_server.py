"""A real Prometheus server scrapes a real Keras `fit` with GPUWatch's endpoint, and a real
Pushgateway gets a finished run's final figures. The servers are Debian's `prometheus` and
`prometheus-pushgateway`, on the loopback address, with temporary configurations."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
import warnings

import keras
import numpy as np
from prometheus_tools import free_port, library, program, serve, stop

from gpu_watch import GPUWatch, GPUWatchWarning
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

library("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from gpu_watch.export import Prometheus  # noqa: E402

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


def wait_for(predicate, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


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
        url = wait_for(lambda: monitor.exports.exporters and monitor.exports.exporters[0].url,
                       "the endpoint")
        with urllib.request.urlopen(url, timeout=5) as response:
            self.text = response.read().decode()
        steps = (epoch + 1) * STEPS

        def scraped():
            found = api(self.prometheus, "/api/v1/query",
                        query=f'gpu_watch_steps_total{{run="{run}"}}')["result"]
            return found and float(found[0]["value"][1]) >= steps and found

        self.seen.append(float(wait_for(scraped, f"a scrape after epoch {epoch}")[0]["value"][1]))


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
                "gpu_watch_data_wait_ratio", "gpu_watch_verdict", "gpu_watch_run_info",
                "gpu_watch_run_status", "gpu_watch_cause"} <= names
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
        assert watch.monitor.info["verdict"] == "cpu_fallback"
        check = subprocess.run([promtool, "check", "metrics"], input=scrapes.text,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        stop(server)


def test_a_real_pushgateway_gets_the_final_figures(tmp_path):
    pushgateway = program("prometheus-pushgateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve([pushgateway, f"--web.listen-address=127.0.0.1:{port}"],
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
