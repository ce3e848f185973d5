"""``recforge-data``: inspect and prepare datasets with the same config and overrides as ``recforge-train``.

    recforge-data describe data=ml-100k split=leave_one_out [+out=stats.json]
    recforge-data prepare data=gowalla split=lightgcn       # fill the cache, print the data report

``describe`` prints users, items, interactions, density, the rating histogram, interactions-per-user
quantiles, the split sizes and the leak/cold-start report; ``+out=<file>`` also writes them as JSON.
A user mistake prints one line and exits 2.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from recforge.config import CONFIG_DIR, build, check_target
from recforge.errors import RecForgeError
from recforge.utils.io import atomic_write_text

COMMANDS = ("describe", "prepare")
# the data CLI writes nothing but the cache (and +out): no run folder, no log file
HYDRA_OVERRIDES = ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.run.dir=.",
                   "hydra.job.chdir=false"]


def build_datamodule(cfg: DictConfig):
    """The datamodule ``recforge-train`` would build (feedback from the configured loss)."""
    for key in ("data", "split", "datamodule"):
        check_target(cfg, key, fixed=("source", "splitter", "feedback") if key == "datamodule" else ())
    feedback = "implicit"
    if cfg.get("loss") is not None and "_target_" in cfg.loss:
        feedback = build(cfg, "loss").feedback
    return build(cfg, "datamodule", source=build(cfg, "data"), splitter=build(cfg, "split"), feedback=feedback)


def format_stats(stats: dict) -> str:
    lines = [f"dataset        {stats['dataset']} ({stats['feedback']} feedback)",
             f"users          {stats['users']:,}",
             f"items          {stats['items']:,}",
             f"interactions   {stats['interactions']:,}",
             f"density        {stats['density']:.6f}",
             "ratings        " + "  ".join(f"{k}: {v:,}" for k, v in stats["rating_histogram"].items()),
             "per user       " + "  ".join(f"{k}: {v:g}" for k, v in stats["interactions_per_user"].items()),
             "split          " + "  ".join(f"{k}: {v:,}" for k, v in stats["split"].items()),
             f"fingerprint    {stats['fingerprint']}",
             "checks         " + "  ".join(f"{k.removeprefix('data/')}: {v:g}" for k, v in stats["report"].items()
                                          if not k.endswith("_s"))]
    return "\n".join(lines)


def run(command: str, cfg: DictConfig) -> dict:
    dm = build_datamodule(cfg)
    dm.setup()
    stats = dm.stats()
    if command == "describe":
        print(format_stats(stats))
    else:
        print(json.dumps(dm.data_report(), indent=1))
    out = cfg.get("out")
    if out:
        atomic_write_text(out, json.dumps(stats, indent=2, default=str))
        print(f"wrote {out}")
    return stats


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        given = args[0] if args else ""
        print(__doc__.strip() if not given or given.startswith("-") else
              f"error: unknown command {given!r}; use one of {', '.join(COMMANDS)} (e.g. recforge-data describe "
              "data=ml-100k)", file=sys.stderr if given and not given.startswith("-") else sys.stdout)
        sys.exit(0 if not given or given.startswith("-") else 2)
    command = args[0]
    sys.argv = [sys.argv[0], *HYDRA_OVERRIDES, *args[1:]]

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
    def app(cfg: DictConfig) -> None:
        try:
            run(command, cfg)
        except RecForgeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    app()


if __name__ == "__main__":
    main()
