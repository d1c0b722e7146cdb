"""Differentiable strong-lensing physics in torch, shared by the simulator and the models.

`deeplense.lensing.torch_renderer` renders batches of smooth lenses (SIS + external shear,
optional equal point-mass subhalos, Sersic lens light and source) with the conventions of
the NumPy simulator in `training.lensing`.
"""
