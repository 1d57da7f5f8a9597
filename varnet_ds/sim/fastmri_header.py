"""ISMRMRD XML header of a simulated volume, laid out like the fastMRI files' ``ismrmrd_header``.

fastMRI's ``SliceDataset`` derives the phase-encode padding from it as
``padding_left = encodedSpace.y // 2 - center`` and ``padding_right = padding_left + maximum + 1``
(``kspace_encoding_step_1``); :func:`ismrmrd_header` picks ``center``/``maximum`` so that this gives exactly
the first and one-past-last non-zero k-space column.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Dict, Tuple

from varnet_ds.sim.simulate import VolumeSpec

NAMESPACE = "http://www.ismrm.org/ISMRMRD"

# (TR ms, TE ms, TI ms or None, flip angle deg, sequence type, echo train length)
_SEQUENCE: Dict[str, Tuple[float, float, object, float, str, int]] = {
    "CORPD_FBK": (2750.0, 27.0, None, 140.0, "TurboSpinEcho", 4),
    "CORPDFS_FBK": (2870.0, 33.0, None, 140.0, "TurboSpinEcho", 4),
    "AXT1": (250.0, 2.64, None, 70.0, "Flash", 1),
    "AXT1PRE": (2000.0, 9.8, 800.0, 150.0, "TurboSpinEcho", 4),
    "AXT1POST": (2000.0, 9.8, 800.0, 150.0, "TurboSpinEcho", 4),
    "AXT2": (6000.0, 113.0, None, 150.0, "TurboSpinEcho", 16),
    "AXFLAIR": (9000.0, 86.0, 2500.0, 150.0, "TurboSpinEcho", 16),
}


def encoding_limits(width: int, pad: Tuple[int, int]) -> Tuple[int, int, int]:
    """``(minimum, maximum, center)`` of ``kspace_encoding_step_1`` for ``width`` columns, ``pad`` zeros.

    With ``left, right = pad`` the acquired columns are ``[left, width - right)``; fastMRI's formula
    then yields ``padding_left = left`` and ``padding_right = width - right``.
    """
    left, right = pad
    acquired = width - left - right
    if acquired < 1 or left < 0 or right < 0:
        raise ValueError(f"invalid phase-encode padding {pad} for width {width}")
    return 0, acquired - 1, width // 2 - left


def ismrmrd_header(spec: VolumeSpec) -> bytes:
    """UTF-8 XML bytes of the header for ``spec`` (parseable by fastMRI's ``et_query``)."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}ismrmrdHeader")

    def sub(parent, tag, text=None):
        el = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
        if text is not None:
            el.text = str(text)
        return el

    def xyz(parent, tag, x, y, z):
        el = sub(parent, tag)
        for k, val in zip("xyz", (x, y, z)):
            sub(el, k, val)

    h, w = spec.shape
    rh, rw = spec.recon_size
    px = spec.pixel_mm
    tr, te, ti, flip, seq, etl = _SEQUENCE[spec.acquisition]

    study = sub(root, "studyInformation")
    sub(study, "studyTime", "12:00:00")
    meas = sub(root, "measurementInformation")
    sub(meas, "measurementID", f"sim_{spec.seed}_{spec.index}")
    sub(meas, "patientPosition", "FFS" if spec.anatomy == "knee" else "HFS")
    sub(meas, "protocolName", spec.acquisition)
    system = sub(root, "acquisitionSystemInformation")
    sub(system, "systemVendor", "SIEMENS")
    sub(system, "systemModel", spec.system_model)
    sub(system, "systemFieldStrength_T", spec.field_strength)
    sub(system, "relativeReceiverNoiseBandwidth", 0.793)
    sub(system, "receiverChannels", spec.num_coils)
    sub(system, "institutionName", "varnet_ds simulator")
    sub(sub(root, "experimentalConditions"), "H1resonanceFrequency_Hz", int(42577478 * spec.field_strength))

    enc = sub(root, "encoding")
    encoded = sub(enc, "encodedSpace")
    xyz(encoded, "matrixSize", h, w, 1)
    xyz(encoded, "fieldOfView_mm", round(h * px, 3), round(w * px, 3), spec.slice_mm)
    recon = sub(enc, "reconSpace")
    xyz(recon, "matrixSize", rh, rw, 1)
    xyz(recon, "fieldOfView_mm", round(rh * px, 3), round(rw * px, 3), spec.slice_mm)
    sub(enc, "trajectory", "cartesian")
    limits = sub(enc, "encodingLimits")
    lo, hi, centre = encoding_limits(w, spec.pad)
    for tag, (a, b, c) in (
        ("kspace_encoding_step_1", (lo, hi, centre)),
        ("kspace_encoding_step_2", (0, 0, 0)),
        ("average", (0, 0, 0)),
        ("slice", (0, spec.num_slices - 1, spec.num_slices // 2)),
        ("contrast", (0, 0, 0)),
        ("phase", (0, 0, 0)),
        ("repetition", (0, 0, 0)),
        ("set", (0, 0, 0)),
        ("segment", (0, etl - 1, 0)),
    ):
        el = sub(limits, tag)
        sub(el, "minimum", a)
        sub(el, "maximum", b)
        sub(el, "center", c)
    par = sub(enc, "parallelImaging")
    acc = sub(par, "accelerationFactor")
    sub(acc, "kspace_encoding_step_1", 1)
    sub(acc, "kspace_encoding_step_2", 1)
    sub(par, "calibrationMode", "other")

    params = sub(root, "sequenceParameters")
    sub(params, "TR", tr)
    sub(params, "TE", te)
    if ti is not None:
        sub(params, "TI", ti)
    sub(params, "flipAngle_deg", flip)
    sub(params, "sequence_type", seq)
    sub(params, "echo_spacing", round(te / max(1, etl // 2), 3))
    user = sub(root, "userParameters")
    for name, val in (("EchoTrainLength", etl), ("Simulator", 1)):
        el = sub(user, "userParameterLong")
        sub(el, "name", name)
        sub(el, "value", val)
    ET.indent(root, space="   ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
