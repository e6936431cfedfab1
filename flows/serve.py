"""`python -m flows.serve`: the `reproduce-all` deployment in one terminal, without a work pool or a worker.

Registers the deployment as prefect.yaml declares it (name, description, tags, parameters, schedule and
concurrency limit are read from there, so the two ways cannot drift apart) and runs its flow runs in
subprocesses of this process until it is stopped (Ctrl-C; the schedule is paused on the way out). Run it from
the project root, against a Prefect server (PREFECT_API_URL in the environment or the active profile).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

__all__ = ["deployment_spec", "serve", "main"]

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def deployment_spec(name: str = "reproduce-all", path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The deployment called `name` in prefect.yaml, as a mapping."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for deployment in data.get("deployments", []):
        if deployment.get("name") == name:
            return deployment
    raise KeyError(f"no deployment {name!r} in {path}")


def serve(name: str = "reproduce-all", *, limit: int | None = None) -> None:
    """Serve the deployment `name` of prefect.yaml until stopped; `limit`: runs at once in this process."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from flows.reproduce import reproduce_all

    spec = deployment_spec(name)
    if spec["entrypoint"] != "flows/reproduce.py:reproduce_all":
        raise ValueError(f"flows.serve serves reproduce-all only, not {spec['entrypoint']}")
    schedules = [
        Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
        for s in spec.get("schedules", [])
    ]
    concurrency = spec.get("concurrency_limit")
    if isinstance(concurrency, dict):
        concurrency = ConcurrencyLimitConfig(**concurrency)
    reproduce_all.serve(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters"),
        schedules=schedules,
        global_limit=concurrency,
        limit=limit,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="reproduce-all", help="deployment of prefect.yaml to serve")
    parser.add_argument("--limit", type=int, default=None, help="flow runs at once in this process")
    args = parser.parse_args(argv)
    serve(args.name, limit=args.limit)


if __name__ == "__main__":
    main()
