"""The glue to a running Keras `fit`: the callback and its options, one run's lifecycle
(`Monitor`), where step 0 ran, the reads of Keras' private state, the watchdog, and what a
process gathers once for every `fit` it runs."""
