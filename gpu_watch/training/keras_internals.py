"""Keras' private state: the only module that reads it.

Some of what GPUWatch needs has no public Keras API: the frame of the running `fit` call (found
by walking the stack), the data adapter that feeds it (fit's local `epoch_iterator` and the
adapter's private attributes), the progress bars of fit's callback list (asked to show the live
figures as they are), and, on every sampler tick, whether the training thread runs Keras' data
adapters (read from the file names of its stack); and, for the placement probes, the arrays
Keras' JAX trainer carries from step to step and the device a `keras.device` scope set on torch.
It also wraps what an error passes through on its way out of `fit` (`on_fit_error`), so that a
`fit` that raises closes its run at once. Behind a `tf.data` pipeline it reads TensorFlow's own
private state too: the pipeline's transformations and their functions, and the registry through
which tf.data calls Python (`_time_python_function`).

Checked against Keras 3.11.0, the oldest that `pyproject.toml` allows (`make test-keras-oldest`),
and Keras 3.15, the one `make test` installs, on TensorFlow; the JAX and torch trainers build
the same epoch iterator and callback list in their `fit`. The training loop's clock
(`attach_loop_clock`, `attach_fetch_timer`) wraps a few of those objects' methods for the
length of one `fit`; `Attachment.detach` takes the wrappers off again.

A Keras release may rename any of it. So each probe returns a `Probed`: the value it read and,
when it could not read what it looked for, the reason (None when it worked). A probe never
raises: an exception becomes its reason, which names the probe, what it looked for and the
error; the value then falls back to what means "unknown" (no frame, the "unknown" data source,
no progress bars, no data tick), as it would without a `fit` call. `run.json` records each
probe's outcome under "keras_probes" (`outcomes`), so a probe that stopped working shows there
instead of in remedies that quietly got vaguer.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_watch.errors import swallowed
from gpu_watch.judging.data_wait import DataTick
from gpu_watch.sensing.loop_clock import FETCH_TIMED, READY_TIMED, LoopClock

OK = "ok"
# Reasons that are no failure: without a `fit` call there is nothing to read.
NO_FIT = "fit_frame: no Keras fit call on the stack: the hooks were called directly, not by fit"
NO_FRAME = "nothing to read without a Keras fit call"
NO_WATCH = "data_ticks: not run without a Keras fit call whose thread to watch"

# Keras' data adapters (keras/src/trainers/data_adapters/) by class name, and the source each
# reads, as `causes.DATA_SOURCES` names them.
_ADAPTER_SOURCES = {
    "ArrayDataAdapter": "arrays", "TFDatasetAdapter": "tf_data",
    "PyDatasetAdapter": "py_dataset", "GeneratorDataAdapter": "generator",
    "TorchDataLoaderAdapter": "torch_dataloader", "GrainDatasetAdapter": "grain",
}
_MAX_PIPELINE = 50  # tf.data transformations followed back from the last one
# Code that fetches training data: Keras' data adapters, torch's DataLoader, and the threads
# tf.data runs Python on (a generator, a `tf.py_function` or `tf.numpy_function` in a `map`).
_GENERATOR_CODE = ("from_generator_op.py", f"{os.sep}script_ops.py")
_DATA_CODE = (f"{os.sep}data_adapters{os.sep}", f"torch{os.sep}utils{os.sep}data{os.sep}",
              *_GENERATOR_CODE)
_MAX_DEPTH = 200
_MESSAGE_CHARS = 160  # of an exception's message in a reason


@dataclass(frozen=True, slots=True)
class Probed:
    """What a probe of Keras' internals found.

    Attributes:
        value: What it read; when it could not, the value that means "unknown".
        reason: Why it could not read what it looked for; None when it worked.
    """

    value: Any
    reason: str | None = None

    @property
    def outcome(self) -> str:
        """The probe's entry in `run.json`'s "keras_probes": "ok", or the reason."""
        return OK if self.reason is None else self.reason


def outcomes(fit_frame: Probed, **probes: Probed) -> dict[str, str]:
    """`run.json`'s "keras_probes" as training begins: each probe's outcome by name, and
    "data_ticks", which the sampler's ticks update if the stack probe fails (`data_tick`)."""
    record = {"fit_frame": fit_frame.outcome}
    record.update((name, probed.outcome) for name, probed in probes.items())
    record["data_ticks"] = OK if fit_frame.value is not None else NO_WATCH
    return record


def _failure(probe: str, looked_for: str, exc: BaseException) -> str:
    message = str(exc)
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS - 3] + "..."
    return f"{probe}: {looked_for} raised {type(exc).__name__}: {message}"


# -- the fit call ------------------------------------------------------------------------------


def fit_frame() -> Probed:
    """The frame of the Keras `fit` call that runs the caller: None, with `NO_FIT`, when the
    caller does not run inside one."""
    try:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "fit" and str(
                    frame.f_globals.get("__name__", "")).startswith("keras"):
                return Probed(frame)
            frame = frame.f_back
    except Exception as exc:
        return Probed(None, _failure("fit_frame", "walking the stack for Keras' fit", exc))
    return Probed(None, NO_FIT)


# -- the trainers' state ------------------------------------------------------------------------


def jax_train_state(model: Any) -> Probed:
    """The trainable arrays Keras' JAX trainer passes from step to step during `fit`
    (`model._jax_state`; between `fit` calls it is None, and the variables hold the weights):
    the list, or None with the reason."""
    try:
        state = getattr(model, "_jax_state", None)
        if not state:
            return Probed(None, "jax_train_state: the model has no _jax_state (not inside fit)")
        arrays = state.get("trainable_variables")
    except Exception as exc:
        return Probed(None, _failure("jax_train_state", "model._jax_state", exc))
    if not arrays:
        return Probed(None, "jax_train_state: model._jax_state has no trainable_variables")
    return Probed(list(arrays))


def torch_device_scope() -> Probed:
    """The device a `keras.device(...)` scope set on the torch backend: Keras keeps it in its
    own global attribute "torch_device", not in torch's default device. None when no scope
    is open."""
    try:
        from keras.src.backend.common import global_state

        device = global_state.get_global_attribute("torch_device")
    except Exception as exc:
        return Probed(None, _failure("torch_device_scope", "Keras' torch_device attribute",
                                     exc))
    return Probed(None if device is None else str(device))


# -- the progress bars -------------------------------------------------------------------------


def progress_bars(fit_frame: Any) -> Probed:
    """The `keras.callbacks.ProgbarLogger`s of the running `fit` call: in its `CallbackList`,
    fit's local `callbacks`, built before `on_train_begin` (none with `verbose=0`).

    Args:
        fit_frame: The frame of Keras' `fit` call, or None.

    Returns:
        The loggers; [] without the frame or when the callback list cannot be read (the bars
        then stay as Keras made them).
    """
    if fit_frame is None:
        return Probed([], f"progress_bars: {NO_FRAME}")
    import keras

    try:
        callbacks = fit_frame.f_locals.get("callbacks")
        if callbacks is None:
            return Probed([], "progress_bars: Keras' fit frame has no local 'callbacks'")
        listed = getattr(callbacks, "callbacks", None)
        if listed is None:
            return Probed([], f"progress_bars: fit's 'callbacks' ({type(callbacks).__name__}) "
                              "has no attribute 'callbacks'")
        bars = [c for c in listed if isinstance(c, keras.callbacks.ProgbarLogger)]
    except Exception as exc:
        return Probed([], _failure("progress_bars", "reading fit's callback list", exc))
    if not all(hasattr(bar, "progbar") for bar in bars):
        # `show_as_is` keeps asking such a logger for a bar that never comes.
        return Probed(bars, "progress_bars: a ProgbarLogger has no attribute 'progbar'")
    return Probed(bars)


def show_as_is(loggers: list[Any], keys: Any) -> list[Any]:
    """Have the progress bars of `loggers` show `keys` as they are, not averaged over the epoch.

    Keras' `Progbar` averages every value not in its `stateful_metrics`. Up to Keras 3.14,
    `ProgbarLogger` made each epoch's bar with none, so a reading would show as a running mean
    of readings; from 3.15 it makes them with `stateless_metrics=set()` (`stateful_metrics` is
    then None) and shows every value as it is. Called per batch: a new bar each epoch.

    Returns:
        The loggers to call this for again: those whose bar averages, or has not been made yet.
    """
    again = []
    for logger in loggers:
        bar = getattr(logger, "progbar", None)
        stateful = getattr(bar, "stateful_metrics", None)
        if bar is None or isinstance(stateful, set):
            again.append(logger)
            if isinstance(stateful, set) and not stateful.issuperset(keys):
                stateful.update(keys)
    return again


# -- what feeds fit ----------------------------------------------------------------------------


def data_source(fit_frame: Any) -> Probed:
    """What feeds `fit`: the Keras data adapter of the running `fit` call, with the settings
    that decide how fast it makes batches.

    Every backend's `fit` builds its epoch iterator, which holds the data adapter, before it
    calls `on_train_begin`. Without the frame, or with an iterator of another shape, the
    source is "unknown" (and a remedy says what to check rather than guess); an adapter of a
    class this module does not know is "other".

    Args:
        fit_frame: The frame of Keras' `fit` call, or None.

    Returns:
        ``source`` (see `gpu_watch.judging.causes.DATA_SOURCES`), ``adapter`` (the adapter's class
        name, None when unknown) and the source's settings, e.g. ``workers`` of a PyDataset.
        The settings sharpen a remedy; without them (a reason says why) the source alone
        still picks one.
    """
    unknown = {"source": "unknown", "adapter": None}
    if fit_frame is None:
        return Probed(unknown, f"data_source: {NO_FRAME}")
    try:
        iterator = fit_frame.f_locals.get("epoch_iterator")
        if iterator is None:
            return Probed(unknown, "data_source: Keras' fit frame has no local 'epoch_iterator'")
        adapter = getattr(iterator, "data_adapter", None)
    except Exception as exc:
        return Probed(unknown, _failure("data_source", "reading fit's epoch iterator", exc))
    if adapter is None:
        return Probed(unknown, f"data_source: fit's epoch iterator "
                               f"({type(iterator).__name__}) has no attribute 'data_adapter'")
    name = type(adapter).__name__
    known = next((cls.__name__ for cls in type(adapter).__mro__
                  if cls.__name__ in _ADAPTER_SOURCES), None)
    record: dict[str, Any] = {"source": _ADAPTER_SOURCES.get(known, "other"), "adapter": name}
    if known is None:
        return Probed(record, f"data_source: the data adapter class {name} is not one of "
                              f"Keras' that gpu-watch knows ({', '.join(_ADAPTER_SOURCES)})")
    try:
        settings, missing = _pipeline_settings(record["source"], adapter)
    except Exception as exc:
        return Probed(record, _failure("data_source", f"reading the settings of {name}", exc))
    record.update(settings)
    if missing:
        return Probed(record, f"data_source: the {name} has no attribute {missing!r}")
    return Probed(record)


def _pipeline_settings(source: str, adapter: Any) -> tuple[dict[str, Any], str | None]:
    """The adapter's settings, and the name of one that is missing (None when none is)."""
    if source == "py_dataset":
        dataset = adapter.py_dataset
        return {"workers": dataset.workers, "use_multiprocessing": dataset.use_multiprocessing,
                "max_queue_size": dataset.max_queue_size}, None
    if source == "torch_dataloader":
        loader = adapter._dataloader
        return {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
                "persistent_workers": loader.persistent_workers,
                "prefetch_factor": loader.prefetch_factor, "batch_size": loader.batch_size}, None
    if source == "tf_data":
        return {"transformations": tf_data_transformations(adapter._dataset)}, None
    if source in ("arrays", "grain"):
        missing = None if hasattr(adapter, "_batch_size") else "_batch_size"
        return {"batch_size": getattr(adapter, "_batch_size", None)}, missing
    return {}, None


def tf_data_transformations(dataset: Any) -> list[str]:
    """A tf.data pipeline's steps, last first: "_ParallelMapDataset" -> "parallel_map"; the
    flat map that `Dataset.from_generator` builds is "from_generator"."""
    steps: list[str] = []
    while dataset is not None and len(steps) < _MAX_PIPELINE:
        steps.append("from_generator" if _from_generator(dataset) else _step_name(dataset))
        dataset = getattr(dataset, "_input_dataset", None)
    return steps


def _from_generator(dataset: Any) -> bool:
    """Whether a tf.data transformation is the flat map that `Dataset.from_generator` builds."""
    func = getattr(getattr(getattr(dataset, "_map_func", None), "_func", None),
                   "__qualname__", "")
    return "from_generator" in func


def _step_name(dataset: Any) -> str:
    """A tf.data transformation's name: "_ParallelMapDataset" -> "parallel_map"."""
    name = type(dataset).__name__.lstrip("_")
    name = re.sub(r"Dataset(V\d)?$", "", name) or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- the sampler's look at the stacks ----------------------------------------------------------


def data_tick(ident: int) -> Probed:
    """What the input pipeline is doing right now: a `DataTick`, or None with the reason.

    Keras fetches the next batch inside the training step on TensorFlow and JAX, so the
    gap between batch hooks misses most of the wait; a look at the stacks does not. The
    training thread (`ident`) is fetching when it runs the data adapters or a torch
    DataLoader; another thread is producing when it runs the Python generator behind a
    `tf.data` pipeline (which runs ahead of the step: see `Loop.wait`). Runs on every sampler
    tick: it only compares file names.
    """
    try:
        fetching = producing = False
        for thread, frame in sys._current_frames().items():
            mine = thread == ident
            if _runs(frame, _DATA_CODE if mine else _GENERATOR_CODE):
                if mine:
                    fetching = True
                else:
                    producing = True
    except Exception as exc:
        return Probed(None, _failure("data_ticks", "looking for Keras' data adapters in the "
                                                   "threads' stacks", exc))
    return Probed(DataTick(fetching, producing))


def _runs(frame: Any, markers: tuple[str, ...]) -> bool:
    """Whether a thread's stack, from `frame` down, runs code from a file matching `markers`."""
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if any(marker in frame.f_code.co_filename for marker in markers):
            return True
        frame = frame.f_back
        depth += 1
    return False


# -- the training loop's clock ------------------------------------------------------------------


class Attachment:
    """Wrappers set on Keras' objects for one `fit`, as instance attributes over the class's
    methods (or as a mapping's entries); `detach` takes them off (a callback list or adapter
    the user keeps is left as it was)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, value: Any) -> None:
        """Set `owner.name` to `value`, remembering what was there."""
        own = vars(owner)
        had, old = name in own, own.get(name)

        def put_back() -> None:
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)

        self._undo.append(put_back)
        setattr(owner, name, value)

    def wrap_item(self, mapping: Any, key: Any, value: Any) -> None:
        """Set `mapping[key]` to `value` (held here until `detach`: the mapping may keep weak
        references only), remembering what was there."""
        old = mapping[key]

        def put_back() -> None:
            if mapping.get(key) is value:  # replaced since: what is there now is not ours
                mapping[key] = old

        self._undo.append(put_back)
        mapping[key] = value

    def detach(self) -> None:
        """Put back what each wrapper replaced, last first."""
        while self._undo:
            try:
                self._undo.pop()()
            except Exception:  # an object gone odd keeps its wrapper: it only times, and calls on
                continue


def attach_loop_clock(fit_frame: Any, clock: LoopClock, attachment: Attachment,
                      skip: Any = None) -> Probed:
    """Time the loop on the training thread: wrap the `on_epoch_begin`, `on_train_batch_begin`
    and `on_train_batch_end` of `fit`'s callback list (its local `callbacks`), which Keras calls
    on the thread that runs the loop before it hands a hook to its thread pool, and the batch
    hooks of each callback in it that has its own (all but `skip`), to say which callbacks
    spend the loop's time (`LoopClock.hook_s`).

    Returns:
        True when attached (`clock.attached` is set), False with the reason.
    """
    if fit_frame is None:
        return Probed(False, f"loop_clock: {NO_FRAME}")
    try:
        callbacks = fit_frame.f_locals.get("callbacks")
        if callbacks is None:
            return Probed(False, "loop_clock: Keras' fit frame has no local 'callbacks'")
        hooks = ("on_epoch_begin", "on_train_batch_begin", "on_train_batch_end")
        missing = [h for h in hooks if not callable(getattr(callbacks, h, None))]
        if missing:
            return Probed(False, f"loop_clock: fit's 'callbacks' ({type(callbacks).__name__}) "
                                 f"has no method {missing[0]!r}")
        listed = list(getattr(callbacks, "callbacks", None) or ())
        clock.device_done = _device_done()
        clock.device_ready = _outputs_ready if clock.device_done is not None else None
        _wrap_list(callbacks, clock, attachment)
        for index, callback in enumerate(listed):
            if callback is not skip:
                _wrap_callback(callback, f"{type(callback).__name__}", index, clock, attachment)
    except Exception as exc:
        attachment.detach()
        return Probed(False, _failure("loop_clock", "wrapping fit's callback list", exc))
    clock.attached = True
    return Probed(True)


def _device_done() -> Any:
    """On JAX, which dispatches each step ahead of the device: a function that waits until a
    step's outputs (its logs) exist. None elsewhere (TensorFlow's `fit` and torch on the CPU
    return from a step once it has run)."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    return _wait_for_one_output


def _wait_for_one_output(logs: Any) -> None:
    """Wait until a JAX step's outputs exist: one of its logs is enough (a step's outputs come
    from one program), and one array's own wait costs far less Python than a pytree's."""
    for value in (logs.values() if isinstance(logs, dict) else ()):
        wait = getattr(value, "block_until_ready", None)
        if wait is not None:
            wait()
            return


def _outputs_ready(logs: Any) -> bool:
    """Whether a JAX step's outputs exist, at once (the array `_wait_for_one_output` waits
    for); True where there is none to wait for."""
    for value in (logs.values() if isinstance(logs, dict) else ()):
        if getattr(value, "block_until_ready", None) is not None:
            return value.is_ready()
    return True


def _wrap_list(callbacks: Any, clock: LoopClock, attachment: Attachment) -> None:
    now = clock.now
    epoch_begin, batch_begin = callbacks.on_epoch_begin, callbacks.on_train_batch_begin
    batch_end = callbacks.on_train_batch_end

    def on_epoch_begin(epoch, logs=None):
        epoch_begin(epoch, logs)
        clock.epoch_begin(now())

    def on_train_batch_begin(batch, logs=None):
        if clock.starting_pass:
            clock.pass_started(now())
        batch_begin(batch, logs)
        clock.begin(batch, now())

    def on_train_batch_end(batch, logs=None):
        # Recorded before the hooks run: one that raises (`require_gpu`, an idle stop, a bug)
        # still leaves the step counted. The end hooks' own time goes to the next step.
        clock.end(batch, now(), logs)
        batch_end(batch, logs)

    attachment.wrap(callbacks, "on_epoch_begin", on_epoch_begin)
    attachment.wrap(callbacks, "on_train_batch_begin", on_train_batch_begin)
    attachment.wrap(callbacks, "on_train_batch_end", on_train_batch_end)


def _own_hook(callback: Any, name: str) -> bool:
    """Whether the callback's class overrides Keras' default (empty) hook `name`."""
    return not getattr(getattr(type(callback), name, None), "_is_default", False)


def _wrap_callback(callback: Any, name: str, index: int, clock: LoopClock,
                   attachment: Attachment) -> None:
    """Time a callback's batch hooks where it has its own (Keras' default ones do nothing, or
    call `on_batch_begin`/`on_batch_end`)."""
    now = clock.now
    for hook, general in (("on_train_batch_begin", "on_batch_begin"),
                          ("on_train_batch_end", "on_batch_end")):
        if not (_own_hook(callback, hook) or _own_hook(callback, general)):
            continue
        original = getattr(callback, hook)
        key = (index, name)

        def timed(batch, logs=None, _original=original, _key=key):
            clock.hook_begins()
            start = now()
            try:
                return _original(batch, logs=logs)
            finally:
                clock.add_hook_time(_key, now() - start)

        attachment.wrap(callback, hook, timed)


class _TimedIterator:
    """An iterator whose every `next` the training thread pays for is timed as a fetch."""

    __slots__ = ("_iterator", "_clock", "_now", "_begins")

    def __init__(self, iterator: Any, clock: LoopClock) -> None:
        self._iterator = iterator
        self._clock = clock
        self._now = clock.now
        # Where the device's steps are looked at as fetches begin (JAX).
        self._begins = clock.fetch_begins if clock.device_ready is not None else None

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        if self._begins is not None:
            self._begins()
        start = self._now()
        try:
            return next(self._iterator)
        finally:
            self._clock.fetched(start, self._now())


class _TimedSource:
    """What the epoch iterator iterates, made to time each pull of a batch. A pass starts (a
    torch `DataLoader` starts its workers) in an epoch's setup or tail, outside its loop
    (`LoopClock.pass_started`): that is not timed."""

    __slots__ = ("_source", "_clock")

    def __init__(self, source: Any, clock: LoopClock) -> None:
        self._source = source
        self._clock = clock

    def __iter__(self) -> _TimedIterator:
        return _TimedIterator(iter(self._source), self._clock)

    def __len__(self) -> int:
        return len(self._source)


def _ready_timed_call(function: Callable[..., Any], clock: LoopClock) -> Callable[..., Any]:
    """`function`, each call stamped when it began (tf.data asked) and as it returned (the
    batch was ready), on tf.data's thread."""
    now, ready = clock.now, clock.ready

    def call(*args: Any) -> Any:
        asked = now()
        result = function(*args)
        ready(now(), asked)
        return result

    return call


def _ready_stamped(source: Any, clock: LoopClock) -> Any:
    """A generator over `source` that stamps each batch when it is asked for and as it leaves
    (on tf.data's thread); a new pass drops the batches the last one made ready and no step
    took."""
    clock.source_restarted()
    pull = _ready_timed_call(iter(source).__next__, clock)
    while True:
        try:
            item = pull()
        except StopIteration:
            return
        yield item


class _ReadyStampedLoader:
    """A torch DataLoader behind tf.data, its batches stamped as ready (see `_ready_stamped`);
    its attributes are the loader's own."""

    def __init__(self, loader: Any, clock: LoopClock) -> None:
        self._loader = loader
        self._clock = clock

    def __iter__(self) -> Any:
        return _ready_stamped(self._loader, self._clock)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def attach_fetch_timer(fit_frame: Any, backend: str, clock: LoopClock,
                       attachment: Attachment) -> Probed:
    """Time each fetch of a training batch where Keras makes it.

    On JAX and torch the training thread pulls every batch from the iterator that fit's
    epoch iterator makes (`_get_iterator`, once per pass): each pull is timed
    (`FETCH_TIMED`). On TensorFlow the step pulls batches inside its graph; a Python source
    behind it runs on a tf.data thread, and each batch is stamped as it leaves the source
    (`READY_TIMED`), and, where it can be seen, when tf.data asked for it: a generator
    (`GeneratorDataAdapter.generator`), a `PyDataset` (with workers, the queue they fill,
    `enqueuer.get`; without, the adapter's `_standardize_batch`, which every batch passes on
    its way out), a torch `DataLoader` (the adapter's `_dataloader`) or a `tf.data` pipeline's
    one Python function run once per batch (`_time_python_function`: a function mapped over
    batches, a `Dataset.from_generator` of batches). Arrays (made into a `tf.data` pipeline)
    and other pipelines run out of Python's sight: no probe, and the reason says so (the stack
    sampler stands in).

    Returns:
        The measure (`FETCH_TIMED` or `READY_TIMED`, also set on `clock.measure`), or None
        with the reason.
    """
    if fit_frame is None:
        return Probed(None, f"data_fetch: {NO_FRAME}")
    try:
        iterator = fit_frame.f_locals.get("epoch_iterator")
        if iterator is None:
            return Probed(None, "data_fetch: Keras' fit frame has no local 'epoch_iterator'")
        if backend in ("jax", "torch"):
            make = iterator._get_iterator
            attachment.wrap(iterator, "_get_iterator",
                            lambda: _TimedSource(make(), clock))
            clock.measure = FETCH_TIMED
            return Probed(FETCH_TIMED)
        if backend != "tensorflow":
            return Probed(None, f"data_fetch: no fetch probe for the {backend!r} backend")
        adapter = iterator.data_adapter
        classes = {cls.__name__ for cls in type(adapter).__mro__}
        if "GeneratorDataAdapter" in classes:
            generator = adapter.generator
            attachment.wrap(adapter, "generator",
                            lambda: _ready_stamped(generator(), clock))
        elif "PyDatasetAdapter" in classes and getattr(adapter, "enqueuer", None) is not None:
            # Workers fill a queue; tf.data asks it for each batch as the step needs it.
            get = adapter.enqueuer.get
            attachment.wrap(adapter.enqueuer, "get", lambda: _ready_stamped(get(), clock))
        elif "PyDatasetAdapter" in classes:
            standardize, now, ready = adapter._standardize_batch, clock.now, clock.ready

            def stamped(batch):
                batch = standardize(batch)
                ready(now())
                return batch

            attachment.wrap(adapter, "_standardize_batch", stamped)
        elif "TorchDataLoaderAdapter" in classes:
            attachment.wrap(adapter, "_dataloader",
                            _ReadyStampedLoader(adapter._dataloader, clock))
        elif "TFDatasetAdapter" in classes:
            unseen = _time_python_function(fit_frame, iterator, adapter, clock, attachment)
            if unseen is not None:
                return Probed(None, f"data_fetch: {unseen}")
        else:
            return Probed(None, f"data_fetch: {_out_of_sight(adapter)}")
    except Exception as exc:  # each branch wraps last: nothing was set
        return Probed(None, _failure("data_fetch", "wrapping the epoch iterator's source", exc))
    clock.measure = READY_TIMED
    return Probed(READY_TIMED)


# -- a Python function inside a tf.data pipeline -------------------------------------------------

_SAMPLED = "the wait is sampled from the threads' stacks"
# tf.data transformations (by `_step_name`) that give one element for each of their input's, in
# order: a Python function in a `map` reached from the pipeline's end through these alone runs
# once per batch.
_ONE_TO_ONE = frozenset({"map", "parallel_map", "prefetch", "options", "repeat", "take",
                         "private_thread_pool", "max_intra_op_parallelism",
                         "assert_cardinality"})
# The graph ops that call Python: `tf.numpy_function`, `tf.py_function`, `tf.compat.v1.py_func`.
_PY_FUNC_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# The Python function `Dataset.from_generator` calls for each item its generator yields, by the
# end of its qualified name; the dataset's other two run once per pass over it.
_GENERATOR_NEXT = "generator_next_fn.<locals>.generator_py_func"


def _time_python_function(fit_frame: Any, iterator: Any, adapter: Any, clock: LoopClock,
                          attachment: Attachment) -> str | None:
    """Stamp each batch as the Python function in the training's tf.data pipeline returns it
    (`READY_TIMED`), where there is exactly one run per element and each element it gives is a
    batch: a `map` of a `tf.numpy_function` or `tf.py_function` after `batch`, or a
    `Dataset.from_generator` whose generator yields batches.

    tf.data calls it on a thread of its own, through TensorFlow's registry of Python functions
    (`script_ops._py_funcs`, by the token the graph op carries): the registry's entry (or, for
    a `tf.py_function`, the function its entry calls) is wrapped, and each pass over the
    dataset (`_get_iterator`) drops the batches the last one made ready and no step took.

    Returns:
        None when attached; else why not (no Python function, one per element, several, one
        that validation calls too), and the stack sampler stands in.
    """
    from tensorflow.python.ops import script_ops

    registry = script_ops._py_funcs
    dataset = adapter.get_tf_dataset()
    if not hasattr(dataset, "_inputs"):  # e.g. a strategy's DistributedDataset
        return (f"the {type(dataset).__name__} is not a tf.data pipeline to look through for "
                f"Python functions: {_SAMPLED}")
    per_batch, every = _pipeline_python_functions(dataset, registry)
    if every is None:
        return (f"the tf.data pipeline has over {_MAX_PIPELINE} transformations to look "
                f"through for Python functions: {_SAMPLED}")
    if not every:
        return _out_of_sight(adapter)
    if len(every) > 1:
        return (f"the tf.data pipeline calls {len(every)} Python functions "
                f"({', '.join(sorted(every))}), not one per batch: {_SAMPLED}")
    if not per_batch:
        return (f"the tf.data pipeline calls Python ({', '.join(every)}) before `batch` or "
                f"another transformation that does not give one element per input: {_SAMPLED}")
    validation = fit_frame.f_locals.get("validation_data")
    if hasattr(validation, "_functions"):
        _, checked = _pipeline_python_functions(validation, registry)
        if checked is None or checked & every:
            return (f"validation reads the same tf.data pipeline's Python function "
                    f"({', '.join(every)}), so its calls are not the training's alone: "
                    f"{_SAMPLED}")
    (token,) = every
    function = registry.get(token)
    if function is None:
        return f"TensorFlow has no Python function registered as {token!r}: {_SAMPLED}"
    make = iterator._get_iterator

    def new_pass() -> Any:
        clock.source_restarted()
        return make()

    attachment.wrap(iterator, "_get_iterator", new_pass)
    if isinstance(function, script_ops.EagerFunc):
        attachment.wrap(function, "_func", _ready_timed_call(function._func, clock))
    else:
        attachment.wrap_item(registry._funcs, token, _ready_timed_call(function, clock))
    return None


def _out_of_sight(adapter: Any) -> str:
    return (f"TensorFlow reads the {type(adapter).__name__}'s batches inside the step, out of "
            f"Python's sight: {_SAMPLED}")


def _pipeline_python_functions(dataset: Any, registry: Any
                               ) -> tuple[set[str], set[str] | None]:
    """The tokens of a tf.data pipeline's Python functions run per element: those run once per
    batch (in a transformation reached from the end through `_ONE_TO_ONE` ones alone, or the
    generator of a `Dataset.from_generator` reached so), and all of them (None when the
    pipeline is too big to look through). `registry` holds the functions by token; a
    generator's start and end, once per pass, are not counted."""
    found: dict[int, set[str]] = {}  # each transformation's, looked up once

    def called(step: Any) -> set[str]:
        if id(step) not in found:
            found[id(step)] = (_generator_items(step, registry) if _from_generator(step)
                               else _python_functions(step))
        return found[id(step)]

    per_batch: set[str] = set()
    step, count = dataset, 0
    while step is not None and count < _MAX_PIPELINE:
        one_to_one = _step_name(step) in _ONE_TO_ONE
        if one_to_one or _from_generator(step):  # a generator's items: the last step looked at
            per_batch |= called(step)
        if not one_to_one:
            break
        step, count = getattr(step, "_input_dataset", None), count + 1
    every: set[str] = set()
    pending, count = [dataset], 0
    while pending:
        if count == _MAX_PIPELINE:
            return per_batch, None
        step, count = pending.pop(), count + 1
        every |= called(step)
        pending.extend(step._inputs())
    return per_batch, every


def _generator_items(dataset: Any, registry: Any) -> set[str]:
    """The token of the Python function that a `Dataset.from_generator` calls for each item
    of its generator (a `tf.py_function`'s registered object holds it as `_func`)."""
    def items(function: Any) -> bool:
        function = getattr(function, "_func", function)
        return getattr(function, "__qualname__", "").endswith(_GENERATOR_NEXT)

    return {token for token in _python_functions(dataset) if items(registry.get(token))}


def _python_functions(dataset: Any) -> set[str]:
    """The tokens of the Python functions that a tf.data transformation's own functions call,
    those of the `tf.function`s they call included."""
    tokens: set[str] = set()
    for wrapper in dataset._functions():
        graph = wrapper.function.graph.as_graph_def()
        nodes = [*graph.node, *(node for function in graph.library.function
                                for node in function.node_def)]
        tokens.update(node.attr["token"].s.decode() for node in nodes
                      if node.op in _PY_FUNC_OPS)
    return tokens


# -- a fit that raises -------------------------------------------------------------------------

# The hooks of fit's callback list that an error of a callback passes through (`on_train_end`
# is not among them: Keras calls it only when training returns).
_CALLBACK_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                   "on_train_batch_end")
_ORIGINAL = "_gpu_watch_original"  # on a wrapper: what it wraps


def on_fit_error(fit_frame: Any, react: Callable[[BaseException], None]) -> Probed:
    """Have `react` called, on the training thread, with an exception on its way out of the
    running `fit` call (Keras calls no callback then), before it goes on up.

    Three things the `fit` frame owns are wrapped, each on its own object (never a class):

    - the TensorFlow and JAX trainers run each epoch's batches inside
      ``with epoch_iterator.catch_stop_iteration():`` (which ends the epoch when the data runs
      out): an error in a step, in the data or in a batch hook passes through it;
    - the hooks of fit's callback list (`_CALLBACK_HOOKS`): an error of any callback, at an
      epoch's start or end too;
    - on a trainer without that block (torch), the model's `train_function`: an error in a
      step.

    What passes none of them (validation, the torch trainer's data) is noticed by the
    sampler's next tick (`watchdog.FitWatchdog`).

    Args:
        fit_frame: The frame of Keras' `fit` call, or None.
        react: Called with the exception; an exception of its own is recorded
            (`errors.swallowed`) and the user's goes on up unchanged. It may be called more
            than once for one exception (it passes through more than one wrapper).

    Returns:
        A callable that takes the wrappers off again (call it when the run closes: the model
        and a callback list the user passed in outlive the `fit` call); None, with the reason,
        when nothing could be wrapped.
    """
    if fit_frame is None:
        return Probed(None, f"fit_errors: {NO_FRAME}")
    undo: list[Callable[[], None]] = []
    missed: list[str] = []
    try:
        local = fit_frame.f_locals
        if "catch_stop_iteration" in fit_frame.f_code.co_names:
            _wrap(local.get("epoch_iterator"), "catch_stop_iteration", _watched_block, react,
                  undo)
        else:
            missed.append("this fit has no catch_stop_iteration block (its data errors are "
                          "noticed at the sampler's next tick)")
            _wrap(local.get("self"), "train_function", _watched_call, react, undo)
        for hook in _CALLBACK_HOOKS:
            _wrap(local.get("callbacks"), hook, _watched_call, react, undo)
    except Exception as exc:  # a probe never raises: the reason goes to run.json
        for step in reversed(undo):
            step()
        return Probed(None, _failure("fit_errors", "wrapping what fit's errors pass through",
                                     exc))

    def unwrap() -> None:
        for step in reversed(undo):
            step()
        undo.clear()

    return Probed(unwrap, f"fit_errors: {'; '.join(missed)}" if missed else None)


def _wrap(owner: Any, name: str, wrapper: Callable[..., Any],
          react: Callable[[BaseException], None], undo: list[Callable[[], None]]) -> None:
    """Replace `owner.name` by `wrapper(current, react)` on the object itself, and add to
    `undo` what puts it back. A wrapper left by an earlier run is taken off first."""
    if owner is None:
        raise AttributeError(f"fit has no object to hold {name!r}")
    own = vars(owner)
    had, before = name in own, own.get(name)
    current = getattr(owner, name)
    while hasattr(current, _ORIGINAL):  # an earlier run's, never taken off
        current = getattr(current, _ORIGINAL)
    wrapped = wrapper(current, react)
    setattr(wrapped, _ORIGINAL, current)
    setattr(owner, name, wrapped)

    def put_back() -> None:
        if vars(owner).get(name) is not wrapped:
            return  # replaced since: what is there now is not ours
        if had and not hasattr(before, _ORIGINAL):
            setattr(owner, name, before)
        elif had:
            setattr(owner, name, current)
        else:
            delattr(owner, name)

    undo.append(put_back)


def _tell(react: Callable[[BaseException], None], error: BaseException) -> None:
    try:
        react(error)
    except Exception as own:  # the user's exception matters more than ours
        swallowed("keras_internals.on_fit_error", own)


def _watched_call(method: Callable[..., Any], react: Callable[[BaseException], None]
                  ) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except BaseException as error:  # any error on its way out of fit, passed on
            _tell(react, error)
            raise

    return call


def _watched_block(block: Callable[[], Any], react: Callable[[BaseException], None]
                   ) -> Callable[[], Any]:
    @contextlib.contextmanager
    def watched() -> Any:
        try:
            with block():
                yield
        except BaseException as error:  # any error that leaves fit's batch loop, passed on
            _tell(react, error)
            raise

    return watched
