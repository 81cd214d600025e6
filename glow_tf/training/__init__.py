"""Training: config (TrainConfig, presets), data, optim, loss, reversible, state (what a
checkpoint holds), distribute (strategies), rundir (the run directory) and trainer."""
