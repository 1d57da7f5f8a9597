"""Evaluation (L2): ``metrics`` (fastmri.evaluate per volume), ``validate`` (the Validator of a training run),
``selection`` (best knee val SSIM), ``export`` (offline reconstruction + metrics.json; CLI ``varnet_ds.evaluate``)."""
