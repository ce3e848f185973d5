"""RecForge's Optuna sweeper for Hydra: ``recforge-train -m hparams_search=bpr`` or ``hydra/sweeper=optuna``."""
