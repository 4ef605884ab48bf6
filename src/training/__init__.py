"""Lightning callbacks and switches for training itself, apart from the explanations: run
safety (atomic checkpoints, finite-loss guard, resume state) and the GPU fast paths."""
