"""The network (L1): ``varnet`` (VarNetDS, build_model), ``compiled`` (torch.compile of the U-Nets), ``weights``
(reading, checking, loading), ``step`` (the one forward + SSIM loss contract)."""
