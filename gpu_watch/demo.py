"""`gpu-watch demo`: train a small CNN with GPUWatch and print what it found.

The images are drawn in-process (bright squares, discs and bars on noise), so the demo needs no
download and runs the same on a laptop, a CI runner or a GPU server.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import TextIO

import numpy as np

SHAPES = ("square", "disc", "bar")


def make_images(count: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` grayscale images of one shape each on noise, and their labels (0, 1, 2).

    Returns:
        Images of shape (count, size, size, 1), float32 in [0, 1], and int32 labels.
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(count, size, size, 1)).astype("float32")
    labels = rng.integers(0, len(SHAPES), size=count).astype("int32")
    yy, xx = np.mgrid[0:size, 0:size]
    for image, label in zip(images, labels, strict=True):
        r = int(rng.integers(size // 8, size // 4))
        cy, cx = rng.integers(r, size - r, size=2)
        if SHAPES[label] == "square":
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif SHAPES[label] == "disc":
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= max(1, r // 4)) & (abs(xx - cx) <= r * 2)
        image[mask, 0] = rng.uniform(0.7, 1.0)
    return images, labels


def build_model(size: int = 32):
    """A small CNN for the shapes (about 30k parameters)."""
    import keras

    return keras.Sequential([
        keras.Input((size, size, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(len(SHAPES), activation="softmax"),
    ])


def run_demo(epochs: int = 3, log_dir: str = "gpu_watch_logs", out: TextIO | None = None) -> int:
    """Train the demo CNN with `GPUWatch()`, then print the verdict, causes and epoch table.

    Returns:
        0 once training ran and the summary was printed, whatever the verdict (the verdict is
        what the demo shows); 2 for a bad argument.
    """
    out = out or sys.stdout
    if epochs < 1:
        print(f"gpu-watch demo: --epochs must be at least 1, got {epochs}", file=out)
        return 2
    from gpu_watch.errors import GPUWatchWarning
    from gpu_watch.report import summary_text
    from gpu_watch.runlog import load_run

    # The demo's own process only: a user's training keeps the framework's logs as it set them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_logs_held_back():
        try:  # the callback imports Keras, and names the extra when its framework is missing
            from gpu_watch.training.callback import CPU_FALLBACK_WARNING, GPUWatch
        except ModuleNotFoundError as exc:
            print(f"gpu-watch demo: {exc}", file=out)
            return 2
        import keras
        x, y = make_images(3000)
        model = build_model()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        watch = GPUWatch(log_dir=log_dir, verbose=0)
        print(f"gpu-watch demo: training a small CNN ({model.count_params():,} parameters) for "
              f"{epochs} epoch(s) with the {keras.backend.backend()} backend ...", file=out,
              flush=True)
        with warnings.catch_warnings():
            # The summary below says it, with the causes: one message per fact.
            warnings.filterwarnings("ignore", message=CPU_FALLBACK_WARNING,
                                    category=GPUWatchWarning)
            model.fit(x, y, epochs=epochs, batch_size=64, validation_split=0.2,
                      callbacks=[watch], verbose=0)
        watch.wait_for_report()  # drawn by another process: the summary points at report.html
    run = load_run(watch.run_dir)
    print(summary_text(run), file=out)
    print(f"Open {run.path / 'report.html'} in a browser for the figures, or run "
          f"`gpu-watch report {run.path}` for this summary again.", file=out)
    return 0


@contextlib.contextmanager
def native_logs_held_back() -> Iterator[None]:
    """Hold back what native code writes to the process's standard error (file descriptor 2).

    TensorFlow's C++ start-up lines ("All log messages before absl::InitializeLog() ...",
    "Could not find cuda drivers ...", "failed call to cuInit ...") are written before its log
    level is read, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them. Python's own ``sys.stderr``
    (warnings, tracebacks) keeps going to the terminal. If the block raises, what was held back
    is written out before the exception, so nothing that explains a failure is lost.
    """
    try:
        python_stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a notebook, a test)
        python_stderr_fd = None
    sys.stderr.flush()
    saved = os.dup(2)
    keep_python = python_stderr_fd == 2
    previous = sys.stderr
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if keep_python:
            sys.stderr = open(saved, "w", closefd=False, encoding=previous.encoding,  # noqa: SIM115
                              errors=previous.errors, buffering=1)
        try:
            yield
        except BaseException:
            _restore_stderr(saved, previous, keep_python)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            sys.stderr.flush()
            raise
        else:
            _restore_stderr(saved, previous, keep_python)
        finally:
            os.close(saved)


def _restore_stderr(saved: int, previous: TextIO, replaced: bool) -> None:
    if replaced:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = previous
    os.dup2(saved, 2)
