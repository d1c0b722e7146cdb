"""What a model's own fit draws beside its reconstruction (`reconstruct_with_fit_maps`):
the maps of the scores it draws (`deeplense.scores.Score.drawn_by_fit`) and per-image
findings, numbers a map does not hold: where LensFit 2's tests place the best blob of mass
and how much each part of imaging_gain explains.

`FINDINGS` names them, with their units, once: the models report them under these names,
the service returns them (`gravitational_imaging` in each result) and `deeplense score`
writes them as CSV columns.
"""

from dataclasses import dataclass, field

from torch import Tensor

# Finding -> what it is. Positions are on the grid the fit used (the image as read unless it
# was resized to the model's input), from the grid's centre: x along columns, left to right,
# y along rows, in the direction of increasing row index.
FINDINGS: dict[str, str] = {
    "tension": "imaging_gain's part from freeing the lens mass's 8 parameters (Einstein "
    "radius, slope, ellipticity, centre, shear) from their prior, beyond what freeing the "
    "source and light gains: a chi-square improvement (8 degrees of freedom for a lens the "
    "model fits); many subhalos inside the ring read as such a pull",
    "blob_gain": "imaging_gain's part from the best blob of mass: the chi-square improvement "
    "when the best one of the blobs tried (a 0.2 arcsec grid within 2 arcsec of the lens "
    "centre) is added to the smooth lens; imaging_gain = tension + blob_gain",
    "blob_x_arcsec": "the best blob's x, arcsec from the grid's centre (along columns); null "
    "when no blob of positive mass improves the fit",
    "blob_y_arcsec": "the best blob's y, arcsec from the grid's centre (along rows); null when "
    "none",
    "blob_column": "the best blob's column on the fitted grid, pixels (0 = the first column's "
    "centre; fractional); null when none",
    "blob_row": "the best blob's row on the fitted grid, pixels (0 = the first row's centre); "
    "null when none",
    "blob_theta_sub_arcsec": "the best blob's Einstein radius, arcsec (a Gaussian convergence "
    "of 0.1 arcsec sigma, a point mass beyond; 0 when no blob of positive mass improves the "
    "fit): its first-order amplitude, a rough size, not a measured mass",
}


@dataclass(frozen=True)
class FitDrawn:
    """A fit's reconstruction (N, 1, H, W), the maps (N, 1, H, W) of the scores it drew (by
    score name) and its findings (by `FINDINGS` name, each (N,) float64, NaN where a finding
    does not exist for an image)."""

    reconstruction: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    findings: dict[str, Tensor] = field(default_factory=dict)


__all__ = ["FINDINGS", "FitDrawn"]
