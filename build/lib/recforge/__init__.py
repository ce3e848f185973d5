"""RecForge: a config-driven experiment framework for deep-learning recommenders."""

import os
from pathlib import Path

# On a CPU, models score items through numpy's BLAS (recforge.utils.linalg.inner_products) and rank them with
# torch's OpenMP threads. OpenBLAS's idle workers spin for ~2^28 cycles (~0.1 s) after each product and take the
# cores from the top-K that follows (full ranking on Gowalla: 6.2 s instead of 3.7 s on 2 cores); 2^4 cycles makes
# them sleep at once. It only applies if set before numpy is first imported (torch imports numpy), so entry points
# import recforge first; set OPENBLAS_THREAD_TIMEOUT yourself to choose otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
"""RecForge's own Hydra configs: the option of every group, each a ``_target_`` and its arguments."""
