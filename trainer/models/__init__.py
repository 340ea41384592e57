"""Recommender models; the explicit registry lives in :mod:`trainer.models.registry`."""
