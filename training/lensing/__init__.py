"""The simulator's lensing: parameters and instrument (render.py, drawing through the torch
renderer in `deeplense.lensing`), photon noise and S/N (noise.py), distances (cosmology.py),
and the lenstronomy reference the renderer is checked against (reference.py)."""
