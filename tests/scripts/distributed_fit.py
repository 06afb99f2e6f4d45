"""Train a tiny Keras model with GPUWatch under a distribution set-up, and print what its run
folder shows as one line: "RESULT {json}".

Usage:
    python distributed_fit.py mirrored LOG_DIR
        TensorFlow MirroredStrategy over two logical CPU devices, in this one process.
    TF_CONFIG=... python distributed_fit.py multi_worker LOG_DIR [RUN_NAME [DELAYS]]
        One worker of a TensorFlow MultiWorkerMirroredStrategy cluster. DELAYS, seconds per
        batch by rank ("0,0.1": rank 1's input takes 0.1 s a batch), reads the samples from a
        Python generator that sleeps that long per batch (TensorFlow's `from_generator`).
    KERAS_BACKEND=jax python distributed_fit.py jax_process LOG_DIR COORDINATOR PROCESS_ID
        One of two JAX processes (`jax.distributed`); TensorFlow is never imported.
    KERAS_BACKEND=torch RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. \
        python distributed_fit.py torch_worker LOG_DIR PORT STEPS COMPUTE_S DELAYS
        One worker of a torch.distributed (gloo) group, started as torchrun starts one (its
        environment names the rank, the group's address and the job). A barrier in the
        forward pass holds every rank at each step until all have reached it, as a gradient
        all-reduce would. Each step computes for COMPUTE_S seconds; DELAYS, seconds per batch
        by rank, is how long each rank's input generator takes. GPUWatch serves Prometheus
        metrics on PORT plus the local rank.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

SAMPLES, BATCH, EPOCHS = 128, 16, 2


def tensorflow_strategy(mode: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # Keras 3 asks this strategy for a mean over axis 0 of each replica's scalar loss, which
    # TensorFlow rejects ("Invalid reduction dimension 0 for input with 0 dimensions"):
    # scalars are averaged as they are.
    reduce = strategy.reduce

    def reduce_scalars_whole(op, value, axis=None):
        local = strategy.experimental_local_results(value)
        scalar = all(getattr(t, "shape", None) is not None and t.shape.rank == 0 for t in local)
        return reduce(op, value, axis=None if scalar else axis)

    strategy.reduce = reduce_scalars_whole
    return strategy


def build(strategy, multi_worker: bool, np):
    import keras

    def make():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    if strategy is None:
        return make()
    with strategy.scope():
        model = make()
        if multi_worker:
            # Keras 3's symbolic build before `fit` cannot reduce this strategy's per-replica
            # batches; building from a plain batch first makes it unnecessary.
            model._symbolic_build(data_batch=(np.zeros((BATCH, 8), "float32"),
                                              np.zeros((BATCH, 1), "float32")))
            model._maybe_symbolic_build = lambda **kwargs: None
    return model


def slow_input(x, y, delay_s: float):
    """The same samples through a Python generator that takes `delay_s` per batch. Each worker
    reads all of them (no auto-sharding: a generator cannot be sharded by file), so every rank
    runs the same steps."""
    import time

    import tensorflow as tf

    def samples():
        for i in range(len(x)):
            time.sleep(delay_s / BATCH)  # evenly: every step of every worker waits its share
            yield x[i], y[i]

    spec = (tf.TensorSpec((8,), tf.float32), tf.TensorSpec((1,), tf.float32))
    data = tf.data.Dataset.from_generator(samples, output_signature=spec).batch(BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return data.with_options(options)


def main(argv: list[str]) -> dict:
    mode, log_dir, *rest = argv
    strategy = None
    if mode in ("mirrored", "multi_worker"):
        strategy = tensorflow_strategy(mode)
    elif mode == "torch_worker":
        return torch_worker(log_dir, *rest)
    elif mode == "jax_process":
        import jax

        coordinator, process_id = rest
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=2,
                                   process_id=int(process_id), initialization_timeout=60)
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    import keras
    import numpy as np

    from gpu_watch import GPUWatch, GPUWatchWarning, load_run

    run_name = rest[0] if mode == "multi_worker" and rest else None
    delays = [float(d) for d in rest[1].split(",")] if mode == "multi_worker" and len(rest) > 1 \
        else None
    model = build(strategy, mode == "multi_worker", np)
    # A run whose input is slowed on purpose is judged by its share of waiting: sampled at
    # 20 ticks a second, a few seconds of training give enough ticks to tell.
    watch = GPUWatch(log_dir=log_dir, run_name=run_name, plot=False, verbose=0,
                     interval_s=0.2 if delays is None else 0.05)
    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 8), dtype=np.float32)
    y = rng.random((SAMPLES, 1), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        if delays is None:
            model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[watch])
        else:
            rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
            model.fit(slow_input(x, y, delays[rank]), epochs=EPOCHS, verbose=0,
                      callbacks=[watch])
    run = load_run(watch.run_dir)
    return {
        "mode": mode,
        "backend": keras.backend.backend(),
        "replicas": strategy.num_replicas_in_sync if strategy is not None else None,
        "run_dir": str(run.path),
        "rank": run.info["rank"],
        "world_size": run.info["world_size"],
        "status": run.status,
        "verdict": run.verdict,
        "placement": run.info["placement"],
        "batches": len(run.batches),
        "epochs": len(run.epochs),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def torch_worker(log_dir: str, port: str, steps: str, compute_s: str, delays: str) -> dict:
    """One rank of a two-process torch training that meets at a barrier in every step."""
    import time

    import keras
    import numpy as np
    import torch.distributed as dist

    from gpu_watch import GPUWatch, GPUWatchWarning, load_run
    from gpu_watch.export import Prometheus

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=120))
    rank = dist.get_rank()
    delay_s = [float(d) for d in delays.split(",")][rank]

    class Collective(keras.layers.Layer):
        """Holds the rank at the step until every rank is there, after COMPUTE_S of work."""

        def call(self, x, training=False):
            if training:
                time.sleep(float(compute_s))
                dist.barrier()
            return x

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                              Collective(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(rank)

    def batches():
        while True:
            time.sleep(delay_s)  # this rank's input: slow or instant
            yield (rng.random((BATCH, 8), dtype=np.float32),
                   rng.random((BATCH, 1), dtype=np.float32))

    watch = GPUWatch(log_dir=log_dir, plot=False, verbose=0, interval_s=0.1,
                     export=Prometheus(port=int(port)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(batches(), steps_per_epoch=int(steps), epochs=1, verbose=0,
                  callbacks=[watch])
    dist.barrier()
    dist.destroy_process_group()
    run = load_run(watch.run_dir)
    return {"mode": "torch_worker", "backend": keras.backend.backend(),
            "run_dir": str(run.path), "rank": run.info["rank"],
            "world_size": run.info["world_size"], "job_id": run.info["job_id"],
            "job_id_from": run.info["job_id_from"], "status": run.status,
            "wait": run.info["wait"], "batches": len(run.batches)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1:])), flush=True)
