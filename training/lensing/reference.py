"""The same images through lenstronomy, to check our ray tracer and to benchmark against.

lenstronomy is a dev dependency only; it is imported when these functions are called.
Its models: SIS + SHEAR + POINT_MASS (x K), SERSIC_ELLIPSE light, GAUSSIAN PSF, with the
pixel grid of the project's renderer (x along columns, y along rows, centred) and its PSF
truncation, both from `SimConfig.render_config`.
"""

from typing import Any

import numpy as np

from training.lensing.render import LensParams, SimConfig, phi_q_to_e1e2


def lens_model(params: LensParams) -> tuple[Any, list[dict[str, float]]]:
    """lenstronomy LensModel and its keyword list for `params`."""
    from lenstronomy.LensModel.lens_model import LensModel

    kwargs = [
        {"theta_E": params.theta_e, "center_x": 0.0, "center_y": 0.0},
        {"gamma1": params.gamma1, "gamma2": params.gamma2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    thetas = params.subhalo_theta or (params.theta_sub,) * len(params.subhalos)
    kwargs += [
        {"theta_E": theta, "center_x": x, "center_y": y}
        for theta, (x, y) in zip(thetas, params.subhalos, strict=True)
    ]
    names = ["SIS", "SHEAR"] + ["POINT_MASS"] * len(params.subhalos)
    return LensModel(names), kwargs


def light_models(
    params: LensParams,
) -> tuple[Any, list[dict[str, float]], Any, list[dict[str, float]]]:
    """lenstronomy (source LightModel, kwargs, lens-light LightModel, kwargs), amp 1 at R_eff."""
    from lenstronomy.LightModel.light_model import LightModel

    e1, e2 = phi_q_to_e1e2(params.source_phi, params.source_q)
    source = [
        {
            "amp": 1.0,
            "R_sersic": params.source_r_eff,
            "n_sersic": params.source_n,
            "e1": e1,
            "e2": e2,
            "center_x": params.source_x,
            "center_y": params.source_y,
        }
    ]
    e1, e2 = phi_q_to_e1e2(params.lens_phi, params.lens_q)
    lens = [
        {
            "amp": 1.0,
            "R_sersic": params.lens_r_eff,
            "n_sersic": params.lens_n,
            "e1": e1,
            "e2": e2,
            "center_x": 0.0,
            "center_y": 0.0,
        }
    ]
    return LightModel(["SERSIC_ELLIPSE"]), source, LightModel(["SERSIC_ELLIPSE"]), lens


class LenstronomyRenderer:
    """Noiseless arcs and lens light (n, n), unit amplitude, PSF applied, via ImageModel."""

    def __init__(self, config: SimConfig) -> None:
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF

        n, pix = config.image_size, config.pixel_scale
        origin = -(n - 1) / 2.0 * pix
        self.config = config
        self.data = ImageData(
            image_data=np.zeros((n, n)),
            ra_at_xy_0=origin,
            dec_at_xy_0=origin,
            transform_pix2angle=np.array([[pix, 0.0], [0.0, pix]]),
        )
        self.psf = PSF(
            psf_type="GAUSSIAN",
            fwhm=config.psf_sigma * 2.0 * np.sqrt(2.0 * np.log(2.0)),
            pixel_size=pix,
            truncation=config.render_config().psf_truncate,
        )
        self.numerics = {"supersampling_factor": config.supersampling}

    def image_model(self, params: LensParams) -> Any:
        """A lenstronomy ImageModel for the profiles of `params` (reusable: only the kwargs
        of `lens_model` / `light_models` change between images of one class)."""
        from lenstronomy.ImSim.image_model import ImageModel

        lens, _ = lens_model(params)
        source, _, light, _ = light_models(params)
        return ImageModel(
            self.data,
            self.psf,
            lens_model_class=lens,
            source_model_class=source,
            lens_light_model_class=light,
            kwargs_numerics=self.numerics,
        )

    def render(self, params: LensParams) -> tuple[np.ndarray, np.ndarray]:
        """(arcs, lens light), each (n, n), surface brightness 1 at R_eff before the PSF."""
        model = self.image_model(params)
        _, lens_kwargs = lens_model(params)
        _, source_kwargs, _, light_kwargs = light_models(params)
        arcs = model.image(lens_kwargs, source_kwargs, light_kwargs, lens_light_add=False)
        lens_light = model.image(
            lens_kwargs, source_kwargs, light_kwargs, source_add=False, lens_light_add=True
        )
        area = self.config.pixel_scale**2  # lenstronomy returns flux per pixel
        return np.asarray(arcs) / area, np.asarray(lens_light) / area
