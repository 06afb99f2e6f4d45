"""Shared fixtures. Tests run on a machine with no GPU: real TensorFlow on the CPU, and
`FakeNVML` for everything only a GPU would show."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from gpu_watch.testing import ManualClock, strict_catches  # noqa: E402


@pytest.fixture(autouse=True)
def _strict_catches():
    """Every test fails when gpu-watch catches, in the sampler, the exporters or the live line,
    an exception only a bug explains (a test that provokes one takes it with
    `gpu_watch.errors.take_swallowed`)."""
    with strict_catches():
        yield


@pytest.fixture(autouse=True)
def _no_lingering_endpoint():
    """A finished run's Prometheus endpoint serves its final figures for a while
    (`Prometheus(linger_s=...)`): closed after each test, so no test sees another's threads."""
    yield
    prometheus = sys.modules.get("gpu_watch.export.prometheus")
    if prometheus is not None:
        prometheus.close_lingering()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
