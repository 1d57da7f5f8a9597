"""The W&B Report of a study (``report``), built from the study loader's runs and ``study.json``."""
