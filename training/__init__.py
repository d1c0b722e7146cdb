"""Offline package: simulate or read lensing datasets, fit, calibrate, evaluate, score."""
