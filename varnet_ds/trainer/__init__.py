"""Training (L3): ``build`` (ordered construction), ``loop`` (the Trainer), ``state`` (counters, preemption vote),
``checkpoint`` (tag/COMPLETE/latest protocol), ``elastic`` (universal checkpoints for another world size)."""
