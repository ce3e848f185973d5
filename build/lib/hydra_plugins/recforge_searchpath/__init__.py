"""Hydra search-path plugin: the config folders named in ``RECFORGE_CONFIG_PATH`` come before RecForge's own."""
