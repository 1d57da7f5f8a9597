"""Memory and speed (L2): ``planner`` and ``memory_plan`` (fastest policy within a GPU budget), ``benchmark``
(rows of ``python -m varnet_ds.bench``), ``memtrack`` (CPU live-tensor peak, FLOPs), ``comms`` (ZeRO-2 traffic)."""
