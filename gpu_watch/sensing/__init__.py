"""What is read from the machine and the training: NVML (the one seam to the driver) and the
sampler thread that reads it, the training loop's clock and the steps it stamps, and the job id a
launcher gives every rank."""
