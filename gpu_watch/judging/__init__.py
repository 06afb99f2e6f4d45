"""What a run's readings mean: this training's use of each GPU, the data wait, the idle
detector, the verdicts and their causes, what each cause cost, and the ranks of one job judged
together. Rules over records: no framework, no NVML, no threads of their own."""
