"""Shared pieces used by both the offline training package and the service.

`deeplense.errors` holds every domain exception; `deeplense.imaging` reads user images;
`deeplense.preprocess` turns an image into model input; `deeplense.metrics` holds the
per-image metrics (W1) shared by evaluation and serving.
"""
