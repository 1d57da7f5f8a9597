"""Studies (L3): arms x seeds as separate training runs. ``runner`` plans, skips, launches and analyses a study;
``launch`` packs its runs onto GPUs or CPU cores; ``ports`` hands out rendezvous ports; ``bench`` measures the
layout. The command lines are ``varnet_ds.study`` and ``varnet_ds.study_bench``; the study folder format is
``varnet_ds.study_folder``."""
