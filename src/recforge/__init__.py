"""RecForge: a config-driven experiment framework for deep-learning recommenders."""

__version__ = "0.1.0"
