"""The simulator (L1): fastMRI-format knee phantoms and Colin27/MNI152 brains with simulated acquisition
(``synth`` CLI, ``simulate``, ``mri_physics``, ``knee_phantom``, ``brain_anatomy``, ``phantom_shapes``,
``fastmri_header``) and previews (``synth_preview``, ``augment_preview``)."""
