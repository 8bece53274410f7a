"""Resolution: Fourier shell correlation (with mask correction), radial filters, B-factor sharpening."""

from cryolive.resolution.filters import fsc_filter, lowpass, radial_filter
from cryolive.resolution.fsc import (
    FSCResult,
    fsc,
    fsc_weight,
    gold_standard_fsc,
    phase_randomize,
    resolution_at,
    shell_frequencies,
    shell_voxel_counts,
    ssnr_from_fsc,
)
from cryolive.resolution.sharpen import auto_bfactor, choose_bfactor, guinier_bfactor, guinier_curve, sharpen

__all__ = [
    "FSCResult",
    "auto_bfactor",
    "choose_bfactor",
    "fsc",
    "fsc_filter",
    "fsc_weight",
    "gold_standard_fsc",
    "guinier_bfactor",
    "guinier_curve",
    "lowpass",
    "phase_randomize",
    "radial_filter",
    "resolution_at",
    "sharpen",
    "shell_frequencies",
    "shell_voxel_counts",
    "ssnr_from_fsc",
]
