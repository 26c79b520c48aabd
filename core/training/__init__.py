"""The training: the trainer (the paper's recipe, safe checkpoints, exact resume), one training
step (``step``), distributed ranks (``distributed``), clean stops (``stopping``), the data
sets (``datasets`` torch-free, ``data`` the loaders), the precision and device choices, and
the training events a follower reads."""
