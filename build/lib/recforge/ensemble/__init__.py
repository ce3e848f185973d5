"""Ensembles of tracked runs: fusion maths (:mod:`.fusion`), member loading (:mod:`.members`), weight tuning and
testing (:mod:`.runner`), and the ``recforge-ensemble`` entry point (:mod:`.cli`)."""
