"""Differentiable strong-lensing physics in torch: the project's one renderer.

`deeplense.lensing.torch_renderer` renders batches of lenses (SIS + external shear,
optional equal point-mass subhalos, Sersic lens light and source) with lenstronomy's
conventions. The simulator (`training.simulate`, through `training.lensing.render`) and the
LensFit model both draw through it.
"""
