"""Strong-lensing image simulator: analytic profiles, ray tracing, noise (NumPy only)."""
