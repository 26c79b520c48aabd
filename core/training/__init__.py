"""The training: the trainer (the paper's recipe, safe checkpoints, exact resume) and the parts
it composes (``evaluation``, ``checkpoints``, ``stop_rules``: the time limit, stop requests
and Slurm's requeue), one training step (``step``), distributed ranks (``distributed``), the
data sets (``datasets`` torch-free, ``data`` the loaders), the precision and device choices."""
