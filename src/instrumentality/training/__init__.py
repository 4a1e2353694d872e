"""Training: the shared trainer, checkpoint files, a run built from its config, and a run folder's identity."""
