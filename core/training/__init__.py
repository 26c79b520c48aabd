"""The training: the trainer (paper's recipe, safe checkpoints, exact resume, DDP), the data
sets, the precision and device choices, and the training events a follower reads."""
