"""The run folder: the only code that writes or reads gpu-watch's files.

A run folder holds ``run.json`` (what ran, where, the verdict), ``samples.csv`` (raw NVML
readings), ``batches.csv`` and ``epochs.csv``, plus the figures and ``report.html`` that
`gpu_watch.report` draws from them. Rows are appended as training goes, whole lines at a time, so
a run that dies (even by SIGKILL) leaves files that still parse; ``run.json`` is replaced
atomically, never half-written. Missing values are empty cells (NaN), never 0.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import io
import json
import math
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gpu_watch._version import __version__

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
SAMPLES_CSV = "samples.csv"
BATCHES_CSV = "batches.csv"
EPOCHS_CSV = "epochs.csv"
UTILIZATION_PNG = "utilization.png"
EPOCHS_PNG = "epochs.png"
REPORT_HTML = "report.html"

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_STOPPED_IDLE = "stopped_idle"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"
STATUS_INCOMPLETE = "incomplete"  # read back: "running" on disk, but its writer is gone

# The sampler's interval, seconds, taken for a run folder whose config does not record its own:
# the default those folders were written with. Fixed here, not read from the sampler, so that a
# later default does not change how they read back.
RECORDED_INTERVAL_S = 0.2

# GPM readings (Hopper and newer; NaN elsewhere) and the whole GPU's energy counter (mJ since
# the driver loaded). Runs written before these existed read back with the columns all NaN.
SAMPLE_ACTIVITY_COLUMNS = (
    "sm_active_pct", "sm_occupancy_pct", "tensor_active_pct", "dram_bw_pct", "fp32_active_pct",
    "fp16_active_pct", "pcie_tx_mib_s", "pcie_rx_mib_s", "energy_counter_mj",
)
SAMPLE_COLUMNS = (
    "time_s", "gpu", "util_pct", "mem_util_pct", "mem_used_mib", "mem_total_mib",
    "proc_mem_mib", "proc_util_pct", "procs", "power_w", "temp_c", "sm_clock_mhz",
    "idle_clock_event", "lost", *SAMPLE_ACTIVITY_COLUMNS, "others_util_pct", "others_mem_mib",
    "judged_util_pct", "fetching_data", "producing_data",
)
# `step_s` is the step's compute, `wait_s` its wait for data (empty where not measured),
# `other_s` the time since the step before spent elsewhere (see `steps.Step`).
BATCH_COLUMNS = ("epoch", "batch", "steps", "time_s", "step_s", "wait_s", "other_s")
BATCH_GPU_COLUMNS = ("util_pct", "mem_used_mib")
# Per epoch, over the watched GPUs: mean GPM percentages, and the energy (J) and mean power (W)
# of the whole GPUs summed; per GPU, `gpu{i}_` + EPOCH_GPU_ACTIVITY_COLUMNS. Optional on read.
EPOCH_ACTIVITY_COLUMNS = (
    "gpu_sm_active_mean", "gpu_tensor_active_mean", "gpu_dram_bw_mean", "gpu_energy_j",
    "gpu_power_mean_w",
)
EPOCH_GPU_ACTIVITY_COLUMNS = ("sm_active_mean", "energy_j", "power_mean_w")
EPOCH_COLUMNS = (
    "epoch", "batches", "duration_s", "first_step_s", "step_s_mean", "compute_s",
    "data_wait_s", "other_s", "wait_fraction", "other_fraction", "wait_measure",
    "gpu_util_mean", "proc_util_mean", "judged_util_mean", "gpu_util_p95",
    "gpu_mem_peak_mib", "idle_fraction", "verdict", *EPOCH_ACTIVITY_COLUMNS,
)
# Columns added after the first release: a run folder written before them still loads, with
# the column all NaN.
_OPTIONAL_COLUMNS = frozenset(SAMPLE_ACTIVITY_COLUMNS + EPOCH_ACTIVITY_COLUMNS) | {
    "others_util_pct", "others_mem_mib", "proc_util_mean", "judged_util_pct", "fetching_data",
    "producing_data", "first_step_s", "judged_util_mean", "wait_measure", "other_s", "compute_s",
    "data_wait_s", "other_fraction"}


class RunFolderError(ValueError):
    """A folder that cannot be read as a gpu-watch run. The message is one line for users."""


def number(value: Any) -> float | None:
    """A cell or `run.json` value read back as a float; None for an empty cell, NaN, or text
    that is no number."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def batch_columns(gpus: Sequence[int]) -> list[str]:
    """`batches.csv` columns for the watched GPUs (NVML indices)."""
    columns = list(BATCH_COLUMNS)
    for gpu in gpus:
        columns += [f"gpu{gpu}_{name}" for name in BATCH_GPU_COLUMNS]
    return columns


def epoch_columns(gpus: Sequence[int]) -> list[str]:
    """`epochs.csv` columns for the watched GPUs (NVML indices); GPM and energy columns, and
    the Keras logs, are added as they come."""
    columns = list(EPOCH_COLUMNS)
    for gpu in gpus:
        columns += [f"gpu{gpu}_util_mean", f"gpu{gpu}_proc_util_mean", f"gpu{gpu}_verdict"]
    return columns


def new_run_dir(log_dir: str | os.PathLike, run_name: str | None = None, rank: int = 0,
                world_size: int = 1) -> Path:
    """Create and return a new run folder under `log_dir`; never reuse an existing one.

    The default name is the start time, a random suffix, and ``-rank<N>`` under multi-worker
    training. `os.mkdir` is atomic, so two processes starting in the same second still get
    folders of their own.
    """
    root = Path(log_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    if world_size > 1:
        base = f"{base}-rank{rank}"
    for attempt in range(1000):
        candidate = root / (base if attempt == 0 else f"{base}-{attempt + 1}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunFolderError(f"could not create a new run folder named {base!r} in {root}")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return value


class CsvTable:
    """An append-only CSV file with a fixed header, written whole lines at a time.

    A failed write (a full disk, say) is rolled back to the last complete line, so the file
    always parses; the error is raised for the caller to report.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.rows_written = 0
        if not path.exists():
            self._write_text(self._encode([self.columns]), mode="w")

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append `rows` (dicts keyed by column; missing keys are empty cells)."""
        lines = [[_cell(row.get(c)) for c in self.columns] for row in rows]
        if lines:
            self._write_text(self._encode(lines), mode="a")
            self.rows_written += len(lines)

    def widen(self, columns: Sequence[str]) -> None:
        """Add columns seen for the first time (e.g. `val_loss` after the first validation),
        rewriting the file in place through a temporary file."""
        new = [c for c in columns if c not in self.columns]
        if not new:
            return
        with self.path.open(newline="") as handle:
            old = list(csv.DictReader(handle))
        columns = self.columns + new
        _atomic_write(self.path, self._encode([columns] + [[r.get(c, "") for c in columns]
                                                          for r in old]))
        self.columns = columns  # only once the file has them: later rows must match its header

    @staticmethod
    def _encode(lines: list[list[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        return buffer.getvalue()

    def _write_text(self, text: str, mode: str) -> None:
        # Unbuffered writes, so that a failure mid-way can be cut back to the last whole line:
        # a buffered file would retry the failed flush on truncate and leave a torn row.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
        fd = os.open(self.path, flags, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            pending = memoryview(text.encode())
            try:
                while pending:
                    pending = pending[os.write(fd, pending):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def _atomic_write(path: Path, text: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; a run folder is for others to read
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w",
                       **({} if isinstance(text, bytes) else {"newline": ""})) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_file(path: Path, data: bytes) -> None:
    """Replace a file of the run folder (a figure, `report.html`) atomically: readers see the
    old file or the new one, never half of one."""
    _atomic_write(path, data)


def write_run_json(run_dir: Path, record: RunRecord) -> None:
    """Replace `run.json` with `record` atomically: readers see the old file or the new one,
    never half."""
    _atomic_write(run_dir / RUN_JSON, json.dumps(_jsonable(record.to_json()), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


def run_identity() -> dict[str, Any]:
    """Who writes the run: host and PID, so a reader can tell a live run from a dead one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def now_iso() -> str:
    """The time now, as `run.json` writes it (UTC, to the second)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_LATER_KEYS = frozenset({"energy", "sampler", "write_errors", "close_errors", "gpu_trial",
                         "rejudged"})


@dataclass(slots=True)
class RunRecord:
    """`run.json`: what ran, where, and what was judged, one attribute per key.

    Every key has its default for a `run.json` that lacks it (one written before the key
    existed, or a run whose end has not come yet); `absent` remembers which keys the file
    lacked, and `to_json` leaves them out until they are given a value, so a record read and
    written back is the file it came from. Keys this version does not know are kept in
    `unknown` and written back as they were. Sections that one part of gpu-watch fills and
    the rest only reads stay plain dicts, as `run.json` holds them.

    Attributes:
        schema_version: The run folder's format (`SCHEMA_VERSION` when written).
        gpu_watch_version: The gpu-watch that wrote the run.
        run_name: The run folder's name.
        job_id: The id every rank of one training shares (`gpu_watch.sensing.job.find_job_id`).
        job_id_from: Where `job_id` came from (an environment variable, the option, ...).
        rank: This process's rank in a multi-worker training.
        world_size: The number of processes of the training.
        writer: "host" and "pid" of the process that writes the run, so a reader can tell
            a live run from a dead one.
        status: `running`, `completed`, `stopped_idle`, `interrupted` or `failed`; a
            `run.json` that does not say is `incomplete`.
        started_at: When the run started (ISO 8601, UTC, to the second).
        ended_at: When it ended; None while it runs.
        duration_s: Seconds from start to end; None while it runs.
        backend: The Keras backend's name.
        framework: The framework's name, version, GPUs and build.
        devices: The watched GPUs (`nvml.Device.to_dict`: NVML index, UUID, name, memory).
        nvml: What NVML said: "available", "error", driver versions, "gpus_seen",
            "simulated", and the metrics "switched_off" per GPU.
        cuda_visible_devices: `CUDA_VISIBLE_DEVICES` as the run found it (None: unset).
        environment: The doctor's report ("findings", "facts"), or None.
        data: What feeds `fit` (`keras_internals.data_source`), or None.
        distribution: The distribution strategy the training runs under, or None.
        keras_probes: What each read of Keras' internals gave (`keras_internals.outcomes`).
        placement: Where step 0 ran (`placement`'s report); None before step 0 ends.
        verdict: The run verdict; None before one is decided.
        causes: The causes of the verdict, as dicts (code, message, remedy, impact, ...).
        gpu_verdicts: Per watched GPU (NVML index as text), its verdict.
        gpu_judged_by: Per watched GPU, whose utilization judged it ("process", "device").
        judged: Per watched GPU, the figures its verdict was judged by
            (`assessment.judged_record`).
        wait: The loop's wait for data (`timeline.LoopWait.to_dict`), None before a step.
        breakdown: Where the loop's time went, and the slowest callbacks' hooks.
        first_step_s: Step 0's duration, seconds (it compiles); None before it ends.
        idle: "events": the idle stretches and what was done about each.
        faults: The NVML faults seen, each with its time since the start.
        error: "type" and "message" of the exception that ended `fit`, or None.
        config: The options (`config.Config` as a dict).
        energy: The watched GPUs' energy per GPU and in total (`timeline.energy_summary`).
        sampler: The sampler's "ticks", "skipped_ticks" and "errors".
        write_errors: How many writes to the run folder failed.
        close_errors: The steps of closing the run that failed, one line each.
        gpu_trial: The GPU timed on this run's model after a CPU fallback
            (`gpu_watch.training.gpu_trial`), or None.
        rejudged: Set by `gpu_watch.rejudge`: the version that judged the run again, and the
            recorded verdict and causes; None for a run as recorded.
        unknown: Keys this version does not know, with their values.
        absent: The keys `run.json` does not hold (yet); giving one a value adds it.
    """

    schema_version: int = SCHEMA_VERSION
    gpu_watch_version: str | None = None
    run_name: str | None = None
    job_id: str | None = None
    job_id_from: str | None = None
    rank: int | None = None
    world_size: int | None = None
    writer: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_INCOMPLETE
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    backend: str | None = None
    framework: dict[str, Any] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    nvml: dict[str, Any] = field(default_factory=dict)
    cuda_visible_devices: str | None = None
    environment: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    distribution: dict[str, Any] | None = None
    keras_probes: dict[str, str] = field(default_factory=dict)
    placement: dict[str, Any] | None = None
    verdict: str | None = None
    causes: list[dict[str, Any]] = field(default_factory=list)
    gpu_verdicts: dict[str, str] = field(default_factory=dict)
    gpu_judged_by: dict[str, str] = field(default_factory=dict)
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)
    wait: dict[str, Any] | None = None
    breakdown: dict[str, Any] | None = None
    first_step_s: float | None = None
    idle: dict[str, Any] = field(default_factory=lambda: {"events": []})
    faults: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, Any] | None = None
    sampler: dict[str, Any] | None = None
    write_errors: int = 0
    close_errors: list[str] = field(default_factory=list)
    gpu_trial: dict[str, Any] | None = None
    rejudged: dict[str, Any] | None = None
    unknown: dict[str, Any] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Copies: a record made from another (`dataclasses.replace`) must not share them.
        self.unknown = dict(self.unknown)
        self.absent = set(self.absent)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        with contextlib.suppress(AttributeError):  # `absent` itself is not set yet
            self.absent.discard(name)

    def has(self, key: str) -> bool:
        """Whether `run.json` holds `key` (a run written before the key existed does not)."""
        return key in self.unknown if key not in _RECORD_KEYS else key not in self.absent

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The record of a `run.json` read back; a missing key gets its default.

        Raises:
            RunFolderError: Its schema is newer than this version reads.
        """
        version = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RunFolderError(f"schema version {version!r} is newer than this gpu-watch "
                                 f"reads ({SCHEMA_VERSION}); upgrade gpu-watch")
        known = {k: v for k, v in data.items() if k in _RECORD_KEYS}
        return cls(**known, unknown={k: v for k, v in data.items() if k not in _RECORD_KEYS},
                   absent={k for k in _RECORD_KEYS if k not in data})

    def to_json(self) -> dict[str, Any]:
        """`run.json`'s layout: the keys it holds in their order, then the unknown ones."""
        out = {k: getattr(self, k) for k in _RECORD_KEYS if k not in self.absent}
        out.update(self.unknown)
        return out


_RECORD_KEYS = tuple(f.name for f in fields(RunRecord) if f.name not in ("unknown", "absent"))


def new_run_record(run_dir: Path, rank: tuple[int, int], backend: str,
                   framework: dict[str, Any], devices: list[dict[str, Any]],
                   nvml: dict[str, Any], environment: dict[str, Any] | None,
                   setup: dict[str, Any] | None, config: dict[str, Any],
                   job_id: str | None = None, job_id_from: str | None = None) -> RunRecord:
    """`run.json` as a run starts: every key it holds from the start, the ones known later
    empty; the keys that judging the run adds (`energy`, `sampler`, ...) are absent until
    then.

    Args:
        run_dir: The run folder.
        rank: This process's rank and the number of processes.
        backend: The Keras backend's name.
        framework: The framework's name, version, GPUs and build.
        devices: The watched GPUs (`nvml.Device.to_dict`).
        nvml: What NVML said: "available", "error", driver versions, "gpus_seen", "simulated".
        environment: The doctor's report, or None.
        setup: "data" and "distribution": what the training is set up with; "keras_probes":
            what each read of Keras' internals gave (`keras_internals.outcomes`).
        config: The options.
        job_id: The id every rank of the training shares (`gpu_watch.sensing.job.find_job_id`);
            None: the run folder's name.
        job_id_from: Where `job_id` came from.
    """
    setup = setup or {}
    return RunRecord(
        gpu_watch_version=__version__,
        run_name=run_dir.name,
        job_id=job_id if job_id is not None else run_dir.name,
        job_id_from=job_id_from,
        rank=rank[0],
        world_size=rank[1],
        writer=run_identity(),
        status=STATUS_RUNNING,
        started_at=now_iso(),
        backend=backend,
        framework=framework,
        devices=devices,
        nvml=nvml,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        environment=environment,
        data=setup.get("data"),
        distribution=setup.get("distribution"),
        keras_probes=dict(setup.get("keras_probes") or {}),
        config=config,
        absent=set(_LATER_KEYS),
    )


# -- reading ---------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder read back.

    Attributes:
        path: The run folder.
        record: `run.json` (see `RunRecord`).
        samples: `samples.csv` as a DataFrame (one row per GPU per sampler tick).
        batches: `batches.csv` (one row per batch hook).
        epochs: `epochs.csv` (one row per epoch).
        warnings: What was repaired while reading (e.g. a torn last line after a crash).
    """

    path: Path
    record: RunRecord
    samples: Any
    batches: Any
    epochs: Any
    warnings: list[str] = field(default_factory=list)

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        """`run.json` in its raw form, a plain dict keyed as the file is (`record.to_json()`,
        taken once), for scripts that read the file's keys."""
        return self.record.to_json()

    @property
    def status(self) -> str:
        """`run.json`'s status, or "incomplete" for a run whose writer died before finishing."""
        status = self.record.status
        if status == STATUS_RUNNING and not _writer_alive(self.record):
            return STATUS_INCOMPLETE
        return status

    @property
    def verdict(self) -> str | None:
        """The run verdict (`ok`, `idle`, `cpu_fallback`, `unmonitored`, `unmeasured`), if
        decided."""
        return self.record.verdict

    @property
    def causes(self) -> list[dict[str, Any]]:
        """The causes recorded for the verdict, as dicts (code, message, remedy, ...)."""
        return list(self.record.causes or [])

    @property
    def gpus(self) -> list[int]:
        """NVML indices of the watched GPUs."""
        return [int(d["nvml_index"]) for d in self.record.devices or []]


def _writer_alive(record: RunRecord) -> bool:
    writer = record.writer or {}
    if writer.get("host") != socket.gethostname() or not writer.get("pid"):
        return False
    pid = int(writer["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder written by GPUWatch into pandas DataFrames.

    Args:
        path: The run folder (the one holding `run.json`).

    Returns:
        A :class:`Run` with `record`, `samples`, `batches` and `epochs`.

    Raises:
        RunFolderError: The folder is missing, is not a gpu-watch run, or its files cannot be
            read; the message says which and why, on one line.

    Example:
        >>> run = load_run("gpu_watch_logs/20261126-101500-a1b2c3")
        >>> run.verdict, run.epochs[["epoch", "gpu_util_mean"]]
    """
    import pandas as pd

    folder = Path(path)
    if not folder.exists():
        raise RunFolderError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: not a folder (expected a gpu-watch run folder)")
    record = read_record(folder)
    warnings: list[str] = []
    frames = {}
    for name, columns in (
        (SAMPLES_CSV, SAMPLE_COLUMNS),
        (BATCHES_CSV, BATCH_COLUMNS),
        (EPOCHS_CSV, EPOCH_COLUMNS),
    ):
        frames[name] = _read_csv(folder / name, columns, warnings, pd)
    return Run(folder, record, frames[SAMPLES_CSV], frames[BATCHES_CSV], frames[EPOCHS_CSV],
               warnings)


def read_record(folder: Path) -> RunRecord:
    """`run.json` of the run folder `folder`, checked to be gpu-watch's, of a schema this
    version reads.

    Raises:
        RunFolderError: No `run.json` there, or one that cannot be read, is not JSON, is not
            gpu-watch's or is newer than this version; the message says which.
    """
    meta = folder / RUN_JSON
    try:
        text = meta.read_text()
    except FileNotFoundError:
        raise RunFolderError(f"{folder}: not a gpu-watch run folder (no {RUN_JSON})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{meta}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{meta}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise RunFolderError(f"{meta}: not written by gpu-watch (no schema_version)")
    try:
        return RunRecord.from_json(data)
    except RunFolderError as exc:
        raise RunFolderError(f"{meta}: {exc}") from None


TAIL_BYTES = 4 << 20  # a live run's long CSV files are first read from this far before their end


class TailReader:
    """The complete rows appended to one of a live run's CSV files since the last `read`
    (`gpu-watch watch` follows a run with these).

    Args:
        path: The CSV file (it may not exist yet).
        tail_bytes: On the first read, a file longer than this is read from this far before
            its end (the rows before are older than anything a live view shows).
    """

    def __init__(self, path: Path, tail_bytes: int = TAIL_BYTES) -> None:
        self.path = path
        self.tail_bytes = tail_bytes
        self.offset = 0
        self.columns: list[str] | None = None
        self.torn = False  # whether the last read left an unfinished row for later

    def read(self) -> list[dict[str, str]]:
        """New complete rows as dicts (column -> cell text); [] when nothing new."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # rewritten (its header widened): read it again
            self.offset, self.columns = 0, None
        with open(self.path, "rb") as handle:
            if self.columns is None:
                header = handle.readline()
                if not header.endswith(b"\n"):
                    return []
                self.columns = next(csv.reader([header.decode("utf-8", "replace")]))
                self.offset = max(len(header), size - self.tail_bytes)
                if self.offset > len(header):  # skip the partial row the jump landed in
                    handle.seek(self.offset - 1)
                    self.offset += len(handle.readline()) - 1
            handle.seek(self.offset)
            data = handle.read(max(0, size - self.offset))
        end = data.rfind(b"\n") + 1
        self.torn = end < len(data)
        self.offset += end
        lines = data[:end].decode("utf-8", "replace").splitlines()
        columns = self.columns
        return [dict(zip(columns, row, strict=False)) for row in csv.reader(lines) if row]


def read_whole_rows(path: Path) -> list[dict[str, str]]:
    """A live run's CSV file as rows (column -> cell text), an unfinished last row left out.

    Raises:
        FileNotFoundError: There is no such file (yet).
    """
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return list(csv.DictReader(data.decode("utf-8", "replace").splitlines()))


def _read_csv(path: Path, columns: Sequence[str], warnings: list[str], pd: Any) -> Any:
    if not path.exists():
        warnings.append(f"{path.name} is missing")
        return pd.DataFrame(columns=list(columns))
    try:
        data = path.read_bytes()  # once: a live run's writer may append between two reads
        if data and not data.endswith(b"\n"):  # the writer died (or is) mid-row
            data = data[: data.rfind(b"\n") + 1]
            warnings.append(f"{path.name}: dropped an incomplete last line")
        frame = pd.read_csv(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(columns))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: cannot be read ({exc})") from None
    except (ValueError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(f"{path}: not a valid CSV ({first})") from None
    missing = [c for c in columns if c not in frame.columns and c not in _OPTIONAL_COLUMNS]
    if missing:
        raise RunFolderError(f"{path}: missing columns {', '.join(missing)}")
    for column in columns:
        if column not in frame.columns:
            frame[column] = float("nan")  # an older run: not measured, which NaN says
    return frame


def find_runs(log_dir: str | os.PathLike) -> list[Path]:
    """The run folders directly under `log_dir`, newest first (by start time in `run.json`)."""
    root = Path(log_dir)
    runs = [p for p in root.iterdir() if (p / RUN_JSON).is_file()] if root.is_dir() else []

    def started(p: Path) -> str:
        try:
            return str(json.loads((p / RUN_JSON).read_text()).get("started_at", ""))
        except (OSError, ValueError):
            return ""

    return sorted(runs, key=lambda p: (started(p), p.name), reverse=True)
