"""The instrument the study's data were taken with: pixel scale and PSF, in one place.

Every default of these constants is read from here (the checkpoint's input spec, the
noise-aware scores' matched filter, LensFit's renderer, the simulator).
"""

STUDY_PIXEL_SCALE_ARCSEC = 0.05  # arcsec per pixel: 150 pixels over a 7.5" field
STUDY_PSF_SIGMA_ARCSEC = 0.1  # Gaussian PSF sigma, arcsec
STUDY_IMAGE_SIZE = 150  # pixels per side
# The study's PSF on its pixels: the matched filter's width when a checkpoint records none.
DEFAULT_PSF_SIGMA_PIXELS = STUDY_PSF_SIGMA_ARCSEC / STUDY_PIXEL_SCALE_ARCSEC  # 2.0
