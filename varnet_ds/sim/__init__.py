"""The simulator (L1): fastMRI-format knee phantoms and MNI152 brains with simulated acquisition (``synth`` CLI,
``simulate``, ``mri_physics``, ``knee_phantom``, ``brain_anatomy``, ``anatomy`` (the pinned anatomy file),
``phantom_shapes``, ``fastmri_header``, ``manifest`` (content hashes of simulated files)) and previews
(``synth_preview``, ``augment_preview``)."""
