"""Exporters: the Prometheus text a scrape gets, parsed back; the OpenTelemetry metrics an
in-memory reader collects; the port rule; and failures that stay warnings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import warnings

import pytest
from monitors import monitor_on_gpu, run_for
from prometheus_tools import free_port, free_ports_in_a_row, library
from waiting import wait_until

from gpu_watch import load_run
from gpu_watch.errors import GPUWatchWarning, take_swallowed
from gpu_watch.export import OpenTelemetry, Prometheus, check_targets
from gpu_watch.export.figures import Snapshot, training_util_pct
from gpu_watch.export.prometheus import GPU_LABELS, RUN_LABELS, local_port
from gpu_watch.judging.data_wait import LoopTotals
from gpu_watch.runlog import RunRecord
from gpu_watch.sensing.nvml import Device, Reading
from gpu_watch.testing import FakeGPU, FakeNVML, FakeProcess

library("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MIB = 1024 * 1024


def busy_shared_gpu() -> FakeGPU:
    """An H100 at 90 %: this process at 70 % SM and 6000 MiB, another at 20 % and 2000 MiB."""
    return FakeGPU(name="NVIDIA H100 80GB HBM3", util_pct=90.0, power_w=300.0,
                   processes=[FakeProcess(used_mib=6000.0, sm_util_pct=70.0),
                              FakeProcess(pid=4242, used_mib=2000.0, sm_util_pct=20.0,
                                          name="other")])


def start(tmp_path, gpu, **config):
    monitor = monitor_on_gpu(tmp_path, FakeNVML([gpu], step_s=0.05), **config)
    monitor.begin_epoch(0)
    for step in range(3):  # steps whose fetches were timed: no wait
        monitor.timeline.add_batch(0, step, 1, 0.01 * step, 0.01 * step + 0.005, 0.0,
                                   other_s=0.005, measure="fetch_timed")
    monitor.first_step({"compute_on_gpu": True})
    return monitor


def endpoint_url(monitor) -> str:
    """The URL of `monitor`'s Prometheus endpoint, once its exporter thread has bound it."""
    return wait_until(lambda: monitor.exports.exporters and monitor.exports.exporters[0].url,
                      "the endpoint's URL", every_s=0.05)


def exporters_started(monitor) -> list:
    """`monitor`'s exporters, once its export thread has started them."""
    return wait_until(lambda: monitor.exports.exporters, "the exporters", every_s=0.05)


def scrape(url: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def test_a_scrape_parses_back_with_prometheus_names_units_and_labels(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    gpu = busy_shared_gpu()
    monitor = start(tmp_path, gpu, export=Prometheus(port=0))
    try:
        url = endpoint_url(monitor)
        assert url.startswith("http://127.0.0.1:")
        run_for(monitor, 1.2)  # NVML's process samples and GPM need a period or two
        monitor.end_epoch(0, {})
        assert monitor.exports.wait_handed(10)
        families, _ = scrape(url)
        run_for(monitor, 0.4)
        assert monitor.exports.wait_handed(10)
        later, _ = scrape(url)
    finally:
        monitor.finish("completed")
    run = monitor.record.run_name
    assert all(name.startswith("gpu_watch_") for name in families)

    def one(name, fams=families, **labels):
        samples = [s for s in fams[name].samples
                   if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(samples) == 1, (name, labels, fams[name].samples)
        return samples[0]

    util = one("gpu_watch_gpu_utilization_ratio")
    assert set(util.labels) == set(GPU_LABELS)
    # dcgm-exporter's names: UUID, the host's GPU number, Hostname; no MIG instance here.
    assert util.labels["UUID"] == gpu.uuid and util.labels["gpu"] == "0"
    assert util.labels["minor_number"] == "0" and util.labels["GPU_I_ID"] == ""
    assert util.labels["Hostname"] == socket.gethostname()
    assert util.labels["run"] == run and util.labels["rank"] == "0"
    # No launcher here: the job is the run itself.
    assert util.labels["job_id"] == run == monitor.record.job_id
    assert util.labels["backend"] == "tensorflow" and util.labels["host"] == socket.gethostname()
    assert (util.labels["namespace"], util.labels["pod"], util.labels["container"]) == ("",) * 3
    assert util.value == pytest.approx(0.9)
    assert one("gpu_watch_training_gpu_utilization_ratio").value == pytest.approx(0.7)
    assert one("gpu_watch_gpu_other_processes_utilization_ratio").value == pytest.approx(0.2)
    assert one("gpu_watch_gpu_other_processes").value == 1
    assert one("gpu_watch_training_gpu_memory_used_bytes").value == 6000 * MIB
    assert one("gpu_watch_gpu_memory_total_bytes").value == 81559 * MIB
    assert one("gpu_watch_gpu_sm_active_ratio").value == pytest.approx(0.9)
    # Counters: type counter, samples ending in _total, energy growing with time.
    loop = ("gpu_watch_compute_seconds", "gpu_watch_data_wait_seconds", "gpu_watch_other_seconds",
            "gpu_watch_loop_seconds")
    for name in ("gpu_watch_gpu_energy_joules", "gpu_watch_steps", *loop):
        assert families[name].type == "counter"
        assert all(s.name == f"{name}_total" for s in families[name].samples)
    energy = one("gpu_watch_gpu_energy_joules").value
    assert 300 * 0.5 < energy < 300 * 5  # 300 W for one to a few seconds
    assert one("gpu_watch_gpu_energy_joules", later).value > energy
    steps = one("gpu_watch_steps")
    assert set(steps.labels) == set(RUN_LABELS) and steps.value == 3
    assert one("gpu_watch_compute_seconds").value == pytest.approx(0.015)
    assert one("gpu_watch_loop_seconds").value == pytest.approx(sum(
        one(name).value for name in loop[:3]))
    assert one("gpu_watch_data_wait_ratio").value == pytest.approx(0.0)
    assert one("gpu_watch_gpu_power_watts").value == pytest.approx(300.0)
    info = one("gpu_watch_run_info")
    assert info.value == 1 and info.labels["world_size"] == "1" and info.labels["version"]
    # The verdict as a state set: one series per verdict, 1 for the current one.
    verdicts = {s.labels["gpu_watch_verdict"]: s.value
                for s in families["gpu_watch_verdict"].samples}
    assert verdicts == {"ok": 1, "idle": 0, "cpu_fallback": 0, "unmonitored": 0, "unmeasured": 0}
    assert monitor.record.verdict == "ok"
    causes = {s.labels["cause"] for s in families["gpu_watch_cause"].samples}
    assert causes == {c["code"] for c in monitor.record.causes} and "gpu_shared" in causes
    status = {s.labels["gpu_watch_run_status"]: s.value
              for s in families["gpu_watch_run_status"].samples}
    assert status["running"] == 1 and sum(status.values()) == 1
    # Nothing unbounded: no PID, no process name anywhere.
    for family in families.values():
        for sample in family.samples:
            assert "4242" not in sample.labels.values() and "other" not in sample.labels.values()


def test_linger_zero_closes_the_endpoint_when_the_run_ends(tmp_path):
    monitor = start(tmp_path, busy_shared_gpu(), export=Prometheus(port=0, linger_s=0))
    url = endpoint_url(monitor)
    monitor.end_epoch(0, {})
    monitor.finish("completed")
    assert monitor.exports.wait(10)
    figures = monitor.exports.snapshot.figures()
    assert figures.status == "completed" and figures.verdict == monitor.record.verdict
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_the_endpoint_serves_the_final_status_while_it_lingers_then_closes(tmp_path):
    monitor = start(tmp_path, busy_shared_gpu(), export=Prometheus(port=0, linger_s=5.0))
    url = endpoint_url(monitor)
    monitor.end_epoch(0, {})
    monitor.finish("completed")
    assert monitor.exports.wait(10)
    families, _ = scrape(url)  # within the 5 s it lingers, even on a loaded machine
    status = {s.labels["gpu_watch_run_status"]: s.value
              for s in families["gpu_watch_run_status"].samples}
    assert status["completed"] == 1 and status["running"] == 0

    def closed():
        try:
            urllib.request.urlopen(url, timeout=2)
        except OSError:  # refused, or reset as it closes
            return True
        return False

    wait_until(closed, "the lingering endpoint to close", every_s=0.05)


def test_the_endpoint_serves_metrics_and_nothing_else(tmp_path):
    monitor = start(tmp_path, busy_shared_gpu(), export=Prometheus(port=0))
    try:
        url = endpoint_url(monitor)
        root = url.removesuffix("/metrics")
        for path in ("/", "/metrics/../run.json", "/favicon.ico"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(root + path, timeout=5)
            assert err.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"),
                                   timeout=5)
        assert err.value.code == 501
        request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().rstrip().endswith("# EOF")
    finally:
        monitor.finish("completed")


@pytest.mark.parametrize(("environ", "rank", "expected"), [
    ({}, 0, 9445),
    ({}, 3, 9448),  # no launcher variable: the worker's rank
    ({"LOCAL_RANK": "1"}, 9, 9446),  # torchrun on the second host: rank 9, local rank 1
    ({"SLURM_LOCALID": "2"}, 10, 9447),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "7"}, 15, 9452),
    ({"LOCAL_RANK": "", "SLURM_LOCALID": "4"}, 12, 9449),
    ({"LOCAL_RANK": "x1"}, 2, 9447),  # not a number: the rank
])
def test_each_worker_on_a_host_gets_port_plus_its_local_rank(environ, rank, expected):
    assert local_port(9445, rank, environ) == expected


def test_port_zero_lets_the_system_pick_for_every_worker():
    assert local_port(0, 5, {"LOCAL_RANK": "5"}) == 0


def test_a_port_in_use_is_one_warning_and_the_run_goes_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.warns(GPUWatchWarning, match=f"127.0.0.1:{port}.*Training goes on"):
            monitor = start(tmp_path, busy_shared_gpu(), export=Prometheus(port=port))
            exporters_started(monitor)
        assert monitor.exports.exporters[0].url is None
        run_for(monitor, 0.3)
        monitor.end_epoch(0, {})
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    run = load_run(monitor.run_dir)
    assert run.status == "completed" and run.verdict == "ok" and len(run.samples) > 0


def test_an_unreachable_pushgateway_is_one_warning_and_the_run_folder_is_whole(tmp_path):
    gateway = f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    monitor = start(tmp_path, busy_shared_gpu(),
                    export=Prometheus(port=None, pushgateway=gateway))
    run_for(monitor, 0.3)
    monitor.end_epoch(0, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    pushes = [w for w in caught if issubclass(w.category, GPUWatchWarning)]
    assert len(pushes) == 1 and gateway in str(pushes[0].message)
    run = load_run(monitor.run_dir)
    assert run.status == "completed" and run.verdict == "ok" and len(run.epochs) == 1


def test_a_failing_exporter_is_one_warning_and_training_goes_on(tmp_path):
    class BrokenProvider:
        def get_meter(self, *args, **kwargs):
            raise RuntimeError("collector configuration is broken")

    library("opentelemetry.sdk")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = start(tmp_path, busy_shared_gpu(),
                        export=[OpenTelemetry(meter_provider=BrokenProvider()),
                                Prometheus(port=0)])
        run_for(monitor, 0.3)
        monitor.end_epoch(0, {})
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    assert [s.place for s in take_swallowed("export")] == ["export.job"]  # provoked here
    failed = [str(w.message) for w in caught if issubclass(w.category, GPUWatchWarning)]
    assert len(failed) == 1 and "OpenTelemetry export failed" in failed[0]
    assert len(monitor.exports.exporters) == 1  # the Prometheus one still served
    assert load_run(monitor.run_dir).status == "completed"


def test_training_utilization_is_the_judged_figure_where_a_reading_has_one():
    reading = Reading(time_s=1.0, gpu=0, util_pct=90.0, proc_util_pct=40.0,
                      judged_util_pct=40.0)
    assert training_util_pct(reading) == 40.0
    reading.judged_util_pct = None  # the judged figure cannot tell: no series, not 0
    assert training_util_pct(reading) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"port": 70000}, "port must be None or a TCP port from 0 to 65535, got 70000"),
    ({"port": True}, "got True"),
    ({"port": "9445"}, "got '9445'"),
    ({"address": ""}, "address must be"),
    ({"pushgateway": ""}, "pushgateway must be"),
    ({"port": None}, "needs a pushgateway"),
    ({"linger_s": -1}, "linger_s must be between 0 and 3600 seconds, got -1"),
    ({"linger_s": 3601}, "got 3601"),
    ({"linger_s": "30"}, "got '30'"),
])
def test_bad_prometheus_settings_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Prometheus(**kwargs)


@pytest.mark.parametrize("export", ["prometheus", [Prometheus(), "otel"], 9445])
def test_bad_export_option_names_the_value(export):
    with pytest.raises(ValueError, match=f"export must be None.*got {export!r}"[:60]
                       .replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_targets(export)


def test_bad_opentelemetry_settings_name_the_value():
    library("opentelemetry.sdk")
    with pytest.raises(ValueError, match="endpoint must be an http:// or https:// URL, got "
                                         "'127.0.0.1:4318'"):
        OpenTelemetry(endpoint="127.0.0.1:4318")
    with pytest.raises(ValueError, match="interval_s must be between 1 and 3600 seconds, got 0"):
        OpenTelemetry(interval_s=0)


def test_the_base_install_never_imports_the_exporters_libraries():
    code = ("import sys, gpu_watch.training.monitor, gpu_watch.training.callback; "
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', "
            "'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- OpenTelemetry ---------------------------------------------------------------------------


def otel_points(reader) -> dict[str, list]:
    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(
                    (metric, p) for p in metric.data.data_points)
    return points


def test_opentelemetry_names_gpu_figures_by_the_hardware_conventions(tmp_path):
    library("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gpu = busy_shared_gpu()
    monitor = start(tmp_path, gpu, export=OpenTelemetry(meter_provider=provider))
    try:
        run_for(monitor, 1.2)
        monitor.end_epoch(0, {})
        assert monitor.exports.wait_handed(10)
        points = otel_points(reader)
    finally:
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    run = monitor.record.run_name

    def one(name, **attributes):
        found = [(m, p) for m, p in points[name]
                 if all(p.attributes.get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, (name, points.get(name))
        return found[0]

    metric, util = one("hw.gpu.utilization")
    assert metric.unit == "1" and util.value == pytest.approx(0.9)
    # The device's series name the device only: another training on this GPU reports the
    # same series, and the run's facts are on the training's own metrics.
    assert util.attributes == {"hw.id": gpu.uuid, "hw.type": "gpu", "hw.gpu.task": "general"}
    own = one("gpu_watch.training.gpu.utilization")[1]
    assert own.attributes["gpu_watch.run"] == run and own.attributes["gpu_watch.rank"] == 0
    assert own.attributes["gpu_watch.job_id"] == run and own.attributes["hw.id"] == gpu.uuid
    metric, share = one("hw.gpu.memory.utilization")
    assert metric.unit == "1" and share.value == pytest.approx((6000 + 2000 + 300) / 81559)
    metric, power = one("hw.power")
    assert metric.unit == "W" and power.value == pytest.approx(300.0)
    assert one("gpu_watch.compute.time")[1].value == pytest.approx(0.015)
    assert one("gpu_watch.loop.time")[1].value >= one("gpu_watch.data_wait.time")[1].value
    assert one("gpu_watch.run.info")[1].attributes["gpu_watch.world_size"] == 1
    metric, memory = one("hw.gpu.memory.usage")
    assert metric.unit == "By" and memory.value == pytest.approx(
        (6000 + 2000 + 300) * MIB)  # the processes' memory and the driver's 300 MiB
    metric, energy = one("hw.energy")
    assert metric.unit == "J" and metric.data.is_monotonic and energy.value > 0
    assert set(energy.attributes) == {"hw.id", "hw.type"}
    assert one("gpu_watch.training.gpu.utilization")[1].value == pytest.approx(0.7)
    assert one("gpu_watch.steps")[1].value == 3
    assert one("gpu_watch.verdict", **{"gpu_watch.verdict": "ok"})[1].value == 1
    assert one("gpu_watch.verdict", **{"gpu_watch.verdict": "idle"})[1].value == 0
    assert one("gpu_watch.cause", **{"gpu_watch.cause": "gpu_shared"})[1].value == 1
    # After the run: its final status, until another run exports through this provider.
    final = otel_points(reader)
    status = {p.attributes["gpu_watch.run.status"]: p.value
              for _, p in final["gpu_watch.run.status"]}
    assert status["completed"] == 1 and status["running"] == 0


def errors_by_type(points) -> dict[str, tuple]:
    """`hw.errors`' points by their `error.type`: (value, attributes, metric)."""
    return {p.attributes["error.type"]: (p.value, dict(p.attributes), m)
            for m, p in points.get("hw.errors", [])}


def test_hw_errors_counts_each_type_of_ecc_error_and_rises_with_nvml_s_counts(tmp_path):
    """NVML's ECC counts as OpenTelemetry's `hw.errors` counter, one series per `error.type`,
    on the device's attributes only; an error between two reads is an increase."""
    library("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gpu = busy_shared_gpu()
    gpu.ecc_corrected_errors = lambda t: 3 if t < 0.8 else 7  # four corrected at 0.8 s
    gpu.ecc_uncorrected_errors = 1
    monitor = start(tmp_path, gpu, export=OpenTelemetry(meter_provider=provider))
    try:
        run_for(monitor, 0.5)
        assert monitor.exports.wait_handed(10)
        before = errors_by_type(otel_points(reader))
        run_for(monitor, 1.0)  # the counts are read again a second after the first read
        assert monitor.exports.wait_handed(10)
        after = errors_by_type(otel_points(reader))
    finally:
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    assert {kind: value for kind, (value, _, _) in before.items()} == {
        "corrected": 3, "uncorrected": 1}
    assert {kind: value for kind, (value, _, _) in after.items()} == {
        "corrected": 7, "uncorrected": 1}
    for kind, (_, attributes, metric) in after.items():
        assert attributes == {"hw.id": gpu.uuid, "hw.type": "gpu", "error.type": kind}
        assert metric.unit == "{error}" and metric.data.is_monotonic


def test_a_gpu_without_ecc_exports_no_hw_errors_series(tmp_path):
    library("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gpu = busy_shared_gpu()
    gpu.name = "NVIDIA GeForce RTX 4090"
    monitor = start(tmp_path, gpu, export=OpenTelemetry(meter_provider=provider))
    try:
        run_for(monitor, 1.2)
        assert monitor.exports.wait_handed(10)
        points = otel_points(reader)
    finally:
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    assert points.get("hw.errors", []) == []  # not measured: no series, never 0 errors
    assert [p.value for _, p in points["hw.power"]] == [pytest.approx(300.0)]


def test_an_unreachable_otlp_endpoint_is_one_warning(tmp_path):
    library("opentelemetry.exporter.otlp.proto.http")
    endpoint = f"http://127.0.0.1:{free_port()}/v1/metrics"
    monitor = start(tmp_path, busy_shared_gpu(), export=OpenTelemetry(endpoint=endpoint))
    run_for(monitor, 0.3)
    monitor.end_epoch(0, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.finish("completed")
        assert monitor.exports.wait(30)
    failed = [str(w.message) for w in caught if issubclass(w.category, GPUWatchWarning)]
    assert len(failed) == 1 and endpoint in failed[0]
    assert load_run(monitor.run_dir).status == "completed"


def test_a_figure_missing_from_a_tick_stands_for_a_few_seconds_then_has_no_series():
    from gpu_watch.export.figures import HOLD_S, Snapshot
    from gpu_watch.sensing.nvml import Device

    info = RunRecord(run_name="r", rank=0, backend="jax", status="running")
    snapshot = Snapshot(info, [Device(0, 0, "GPU-a", "NVIDIA H100 80GB HBM3", 81559.0)])

    def tick(t, **fields):
        snapshot.tick([Reading(time_s=t, gpu=0, util_pct=80.0, **fields)], LoopTotals(0, 0.0, 0.0))
        return snapshot.figures().gpus[0]

    assert tick(0.0, judged_util_pct=60.0, sm_active_pct=50.0).training_util_ratio == 0.6
    held = tick(HOLD_S)  # NVML had no new process sample or GPM reading this tick
    assert held.training_util_ratio == 0.6 and held.sm_active_ratio == 0.5
    assert tick(HOLD_S + 0.1).training_util_ratio is None  # too old: not measured, never 0
    assert tick(HOLD_S + 0.2, judged_util_pct=0.0).training_util_ratio == 0.0


def test_the_input_seen_at_work_is_a_counter_of_its_own_beside_the_wait():
    from gpu_watch.export.otel import observations
    from gpu_watch.export.prometheus import families

    info = RunRecord(run_name="r", rank=1, backend="tensorflow", status="running")
    snapshot = Snapshot(info, [])
    # A rank held at the collective: its input, reading ahead, was at work 0.7 s of the loop's
    # 1.2 s and the loop waited for none of it.
    snapshot.tick([], LoopTotals(10, 1.0, 0.0, 0.2, 0.0, 0.7))
    figures = snapshot.figures()
    [busy] = [f for f in families(figures) if f.name == "gpu_watch_input_busy_seconds"]
    assert busy.type == "counter"
    assert [(s.name, s.value, s.labels["rank"]) for s in busy.samples] == [
        ("gpu_watch_input_busy_seconds_total", 0.7, "1")]
    [(value, attributes)] = observations(figures)["gpu_watch.input_busy.time"]
    assert value == 0.7 and attributes["gpu_watch.rank"] == 1
    assert figures.loop_seconds == pytest.approx(1.2)  # not a part of the loop's seconds


def test_consecutive_runs_serve_on_the_same_port(tmp_path):
    """The next run's endpoint takes the port over from the last one, lingering or not: a
    training script that calls `fit` again (one epoch at a time, tuners) keeps its port."""
    port = free_port()
    urls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", GPUWatchWarning)
        for attempt in range(2):
            monitor = start(tmp_path / str(attempt), busy_shared_gpu(),
                            export=Prometheus(port=port))
            url = endpoint_url(monitor)
            families, _ = scrape(url)
            run = families["gpu_watch_steps"].samples[0].labels["run"]
            assert run == monitor.record.run_name
            urls.append(url)
            monitor.end_epoch(0, {})
            monitor.finish("completed")  # the next run starts at once
    assert urls == [f"http://127.0.0.1:{port}/metrics"] * 2


def test_otlp_over_http_reaches_a_receiver_with_the_final_figures(tmp_path):
    """GPUWatch's own meter provider sends OTLP/HTTP protobuf to a receiver on the loopback
    address, and its last export (at the end of the run) carries the final status."""
    library("opentelemetry.exporter.otlp.proto.http")
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    received: list = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            received.append((self.path, self.headers["Content-Type"], request))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
        gpu = busy_shared_gpu()
        monitor = start(tmp_path, gpu, export=OpenTelemetry(endpoint=endpoint))
        run_for(monitor, 0.5)
        monitor.end_epoch(0, {})
        monitor.finish("completed")
        assert monitor.exports.wait(20)
    finally:
        server.shutdown()
        server.server_close()
    assert received, "nothing reached the receiver"
    path, content_type, request = received[-1]
    assert path == "/v1/metrics" and content_type == "application/x-protobuf"
    resource = request.resource_metrics[0]
    resource_attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert resource_attributes["service.name"] == "gpu-watch"
    metrics = {m.name: m for scope in resource.scope_metrics for m in scope.metrics}
    energy = metrics["hw.energy"]
    assert energy.unit == "J" and energy.sum.is_monotonic
    ids = {a.value.string_value for p in energy.sum.data_points for a in p.attributes
           if a.key == "hw.id"}
    assert ids == {gpu.uuid}
    # NVML's counter since the driver loaded (here: since the fake's nvmlInit), so it does
    # not restart with the next run on this GPU; no run attribute on a device series.
    for name in ("hw.energy", "hw.gpu.utilization", "hw.gpu.memory.utilization", "hw.power",
                 "hw.errors"):
        points = getattr(metrics[name], metrics[name].WhichOneof("data")).data_points
        keys = {a.key for p in points for a in p.attributes}
        assert keys and not any(k.startswith("gpu_watch.") for k in keys), (name, keys)
    errors = metrics["hw.errors"]
    assert errors.unit == "{error}" and errors.sum.is_monotonic
    kinds = {a.value.string_value: p.as_double for p in errors.sum.data_points
             for a in p.attributes if a.key == "error.type"}
    assert kinds == {"corrected": 0.0, "uncorrected": 0.0}  # an H100 with ECC, no errors yet
    loop = metrics["gpu_watch.loop.time"]
    assert loop.unit == "s" and loop.sum.is_monotonic
    assert {a.key: a.value.string_value for a in loop.sum.data_points[0].attributes
            }["gpu_watch.job_id"] == monitor.record.job_id
    status = {a.value.string_value: p.as_double
              for p in metrics["gpu_watch.run.status"].gauge.data_points
              for a in p.attributes if a.key == "gpu_watch.run.status"}
    assert status["completed"] == 1.0 and status["running"] == 0.0


def test_a_scrape_that_fails_to_render_is_a_500_and_one_warning():
    import threading

    from prometheus_client import CollectorRegistry

    from gpu_watch.export.prometheus import _Server

    class Broken:
        def collect(self):
            raise RuntimeError("figures unreadable")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Broken())
    server = _Server(("127.0.0.1", 0), registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(url, timeout=5)
                assert err.value.code == 500
    finally:
        server.shutdown()
        server.server_close()
    failed = [str(w.message) for w in caught if issubclass(w.category, GPUWatchWarning)]
    assert len(failed) == 1 and "figures unreadable" in failed[0]
    assert [s.place for s in take_swallowed("export")] == ["export.scrape"] * 2  # provoked


def test_one_meter_provider_serves_run_after_run(tmp_path):
    """Instruments are created once per provider (it refuses a second of the same name); a
    finished run stays observable until the next run through it starts."""
    library("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    runs = []
    for attempt in range(2):
        monitor = start(tmp_path / str(attempt), busy_shared_gpu(),
                        export=OpenTelemetry(meter_provider=provider))
        exporters_started(monitor)
        seen = {p.attributes["gpu_watch.run"] for _, p in otel_points(reader)["gpu_watch.steps"]}
        runs.append(monitor.record.run_name)
        assert seen == {runs[-1]}  # the last run, finished, is no longer observed
        monitor.end_epoch(0, {})
        monitor.finish("completed")
        assert monitor.exports.wait(10)
    seen = {p.attributes["gpu_watch.run"] for _, p in otel_points(reader)["gpu_watch.steps"]}
    assert seen == {runs[-1]}


def test_an_exporter_without_its_library_names_the_install_line():
    from gpu_watch.export import _needs

    with pytest.raises(ImportError, match=r'needs the no_such_library package: pip install '
                                          r'"gpu-watch\[prometheus\]"'):
        _needs("no_such_library.client", "prometheus", "Prometheus export")
    _needs("json", "prometheus", "Prometheus export")  # present: no error
    with pytest.raises(ImportError, match=r'needs the no_such_library package: pip install '
                                          r'"gpu-watch\[otel\]"'):
        _needs("no_such_library", "otel", "OpenTelemetry export")


def test_two_workers_on_one_host_serve_on_neighbouring_ports(tmp_path, monkeypatch):
    """Ranks 0 and 1 of one run on this host, both asked for the same base port: each serves
    on port + its rank, and each endpoint carries its own rank."""
    from gpu_watch.export.prometheus import LOCAL_RANK_VARIABLES
    from gpu_watch.sensing.nvml import NVML
    from gpu_watch.training.config import Config
    from gpu_watch.training.monitor import Monitor

    for name in LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    base = free_ports_in_a_row(2)
    framework = {"name": "tensorflow", "gpus": ["/physical_device:GPU:0"], "cuda_build": True}
    monitors = [Monitor(Config(log_dir=str(tmp_path), run_name="exp1", plot=False,
                               interval_s=0.02, export=Prometheus(port=base)),
                        NVML(FakeNVML([busy_shared_gpu()], step_s=0.05)), "tensorflow",
                        (rank, 2), framework, None) for rank in (0, 1)]
    try:
        for rank, monitor in enumerate(monitors):
            url = endpoint_url(monitor)
            assert url == f"http://127.0.0.1:{base + rank}/metrics"
            families, _ = scrape(url)
            labels = families["gpu_watch_steps"].samples[0].labels
            assert (labels["run"], labels["rank"]) == (f"exp1-rank{rank}", str(rank))
    finally:
        for monitor in monitors:
            monitor.finish("completed")
            monitor.exports.wait(10)


def test_two_trainings_on_one_gpu_report_one_device_and_energy_goes_on(tmp_path):
    """Device series carry no run attribute: two runs on one GPU give one `hw.gpu.utilization`
    point (and two of the training's own), and `hw.energy`, NVML's counter, does not start
    again with the next run: a later run's first figure is above an earlier run's last."""
    library("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gpu = busy_shared_gpu()
    fake = FakeNVML([gpu], step_s=0.05)
    target = OpenTelemetry(meter_provider=provider)
    first = monitor_on_gpu(tmp_path / "a", fake, export=target)
    try:
        run_for(first, 1.5)  # 300 W: about 450 J in the first run alone
        assert first.exports.wait_handed(10)
        [(_, energy_first)] = otel_points(reader)["hw.energy"]
        second = monitor_on_gpu(tmp_path / "b", fake, export=target)
        run_for(second, 0.3)
        assert second.exports.wait_handed(10)
        points = otel_points(reader)
    finally:
        first.finish("completed")
        assert first.exports.wait(10)
    try:
        assert [p.attributes["hw.id"] for _, p in points["hw.gpu.utilization"]] == [gpu.uuid]
        runs = {p.attributes["gpu_watch.run"] for _, p in
                points["gpu_watch.training.gpu.utilization"]}
        assert runs == {first.record.run_name, second.record.run_name}
        [(_, energy_second)] = otel_points(reader)["hw.energy"]  # the second run's alone
    finally:
        second.finish("completed")
        assert second.exports.wait(10)
    assert energy_second.value > energy_first.value > 300 * 0.5


def test_pcie_bytes_add_up_across_runs_of_one_process():
    """GPM's throughput times the time between readings, summed per device for the process's
    life: `hw.gpu.io` of the next run goes on from the last one's."""
    device = Device(0, 0, f"GPU-{uuid.uuid4()}", "NVIDIA H100 80GB HBM3", 81559.0)

    def tick(snapshot, t, tx, rx=None):
        snapshot.tick([Reading(time_s=t, gpu=0, pcie_tx_mib_s=tx, pcie_rx_mib_s=rx)],
                      LoopTotals(0, 0.0, 0.0))
        gpu = snapshot.figures().gpus[0]
        return gpu.pcie_transmit_bytes, gpu.pcie_receive_bytes

    first = Snapshot(RunRecord(run_name="a", status="running"), [device])
    assert tick(first, 0.0, None) == (None, None)  # no GPM yet: no series, not 0
    assert tick(first, 0.5, 100.0, 10.0) == (0.0, 0.0)  # a rate needs a span before it
    assert tick(first, 1.5, 100.0, 10.0) == (100 * MIB, 10 * MIB)
    # the next run: its clock starts again
    second = Snapshot(RunRecord(run_name="b", status="running"), [device])
    assert tick(second, 0.0, 50.0, 0.0) == (100 * MIB, 10 * MIB)
    assert tick(second, 2.0, 50.0, 0.0) == (200 * MIB, 10 * MIB)
