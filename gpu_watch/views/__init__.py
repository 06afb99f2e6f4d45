"""What a person watches while a training runs: the latest readings (the progress bar's line,
TensorBoard, the notebook), the figures drawn in a process of their own, and `gpu-watch watch`."""
