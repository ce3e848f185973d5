"""Hyperparameter search with Optuna.

The Hydra sweeper plugin (``src/hydra_plugins/recforge_optuna_sweeper``) asks the study for trials and
launches them as Hydra jobs; this package holds the Hydra-free parts it uses: storages and resume
(:mod:`~recforge.tuning.study`), the per-epoch pruning callback a trial's training runs with
(:mod:`~recforge.tuning.pruning`) and the MLflow parent/child runs (:mod:`~recforge.tuning.tracking`).
Nothing here is imported on the plain training path; Optuna and MLflow are imported where used.
"""
