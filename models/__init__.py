"""The anomaly models (the study's four, LensFit and LensFit 2) behind one interface
(`models.base.AnomalyModel`) and a registry.

Importing this package registers every model.
"""

from models import aae, dcae, lensfit, lensfit2, rbm, vae  # noqa: F401  (registers the models)
from models.base import AnomalyModel, ModelConfig
from models.registry import create_model, list_models, register_model

__all__ = ["AnomalyModel", "ModelConfig", "create_model", "list_models", "register_model"]
