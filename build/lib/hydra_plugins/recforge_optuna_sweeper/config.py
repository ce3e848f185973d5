"""Structured configs of the sweeper (``hydra/sweeper=optuna``) and its samplers and pruners.

Keys follow Hydra's Optuna sweeper (``n_trials``, ``n_jobs``, ``storage``, ``study_name``, ``sampler``,
``direction``, ``params``) plus ``pruner``, heartbeats and retries. Sampler and pruner nodes are
``_target_`` + arguments, so any argument of the Optuna class can be set, e.g.
``hydra.sweeper.sampler.n_startup_trials=5``. Importing this module imports neither Optuna nor MLflow.
"""


from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SAMPLERS: Dict[str, Dict[str, Any]] = {
    # TPE, seeded from the experiment seed; multivariate TPE models interactions between parameters
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": "${seed}", "n_startup_trials": 10,
            "multivariate": True, "constant_liar": True},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": "${seed}"},
    # CMA-ES for continuous spaces (needs the `cmaes` package); categorical parameters are sampled at random
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": "${seed}", "n_startup_trials": 1,
              "warn_independent_sampling": False},
    # every combination of choice()/range() values once; n_trials is capped at the grid size
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": "${seed}"},
    # several objectives (optimized_metric as a list), e.g. NDCG and coverage
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": "${seed}", "population_size": 20},
}

PRUNERS: Dict[str, Dict[str, Any]] = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 2,
               "interval_steps": 1},
    "successive_halving": {"_target_": "optuna.pruners.SuccessiveHalvingPruner", "min_resource": "auto",
                           "reduction_factor": 3, "min_early_stopping_rate": 0},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto",
                  "reduction_factor": 3},
}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.recforge_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False            # the sweeper builds the sampler and pruner itself
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # "maximize"/"minimize" or one per metric of a list optimized_metric; null: each metric's natural direction
    direction: Any = None
    # SQLite under paths.log_dir by default; an RDB URL or a journal file (*.log) for many workers; null: memory
    storage: Optional[str] = "sqlite:///${paths.log_dir}/optuna.db"
    # null: derived from the task, model, data and search space, so rerunning a command resumes its study
    study_name: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1                      # trials asked and launched together (in parallel with joblib)
    params: Optional[Dict[str, Any]] = None
    heartbeat_interval: Optional[int] = 60   # RDB storages: a trial without heartbeat for grace_period fails
    grace_period: Optional[int] = None       # null: 2 x heartbeat_interval
    max_retry: Optional[int] = 1             # retries of a trial whose worker died
    poll_interval: float = 2.0               # seconds between checks while other workers run the last trials
    mlflow: bool = True                      # parent/child runs when the task tracks with MLflow


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="recforge_optuna_sweeper")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="recforge_optuna_sweeper")
for _name, _node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="recforge_optuna_sweeper")
