"""Recommender models: one ``nn.Module`` per file, all under the contract in :mod:`recforge.models.base`."""
