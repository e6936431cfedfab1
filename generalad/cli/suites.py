"""`generalad reproduce` and `generalad report`: a suite through the Prefect flow, and its paper-style table."""

from __future__ import annotations

import argparse
import sys

from generalad.errors import GeneralADError

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `reproduce` and `report`."""
    reproduce = sub.add_parser("reproduce", help="run the reproduce-all flow on a suite (the main job)")
    reproduce.add_argument("--suite", default="quickstart", help="table1..table5, fig4, quickstart, smoke")
    reproduce.add_argument(
        "--reports",
        default=None,
        help="report store, local path or fsspec URL (default $GENERALAD_REPORTS, else ./reports)",
    )
    reproduce.add_argument("--store", default=None, help="feature store root (default ./stores)")
    reproduce.add_argument(
        "--weights",
        default="auto",
        help="'auto' (pretrained if available, else an explicit random init), 'hub', 'random', or a file",
    )
    reproduce.add_argument("--config", default=None, help="dataset roots TOML (default ./generalad.toml)")
    reproduce.add_argument(
        "--dask-address", default=None, help="existing Dask scheduler (default: LocalCluster)"
    )
    reproduce.add_argument(
        "--workers", type=int, default=None, help="LocalCluster workers (default: per core)"
    )
    reproduce.add_argument("--run-id", default=None, help="report run id (a rerun replaces its own rows)")
    reproduce.add_argument(
        "--no-epoch-eval", action="store_true", help="evaluate only at the end (`last` only)"
    )

    report = sub.add_parser("report", help="render the paper-style table from a report store")
    report.add_argument(
        "--reports", default=None, help="report store (default $GENERALAD_REPORTS, else ./reports)"
    )
    report.add_argument("--suite", default=None, help="only the datasets of this suite")
    report.add_argument("--metric", default="image_auroc")
    report.add_argument("--selection", default="last", choices=("last", "best_on_test"))
    report.add_argument("--format", dest="fmt", default="markdown", choices=("markdown", "csv"))
    report.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flows.runtime import ensure_prefect_api
    from generalad.defaults import default_reports_root, default_store_root

    args.reports = args.reports or default_reports_root()

    with ensure_prefect_api() as api_url:
        # imported only now: Prefect reads PREFECT_API_URL when it is first imported
        from flows.reproduce import SuiteFailed, reproduce_all

        print(f"Prefect API: {api_url}", file=sys.stderr)
        try:
            summary = reproduce_all(
                suite=args.suite,
                reports=args.reports,
                store=args.store or default_store_root(),
                weights=args.weights,
                config=args.config,
                dask_address=args.dask_address,
                n_workers=args.workers,
                eval_every_epoch=not args.no_epoch_eval,
                run_id=args.run_id,
            )
        except SuiteFailed as exc:
            if exc.summary.get("table"):
                print(exc.summary["table"])  # the classes that did run
            print(f"error: {exc}", file=sys.stderr)
            print(f"rows of the tasks that ran are in {args.reports}", file=sys.stderr)
            return 1
        finally:
            _flush_prefect_logs()
    print(summary["table"])
    print(
        f"\nreports: {summary['reports']} (run id {summary['run_id']}); `generalad report --reports {args.reports}`"
    )
    return 0


def _flush_prefect_logs() -> None:
    """Send buffered run logs while the local server still runs (else they fail after it stops)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def _cmd_report(args: argparse.Namespace) -> int:
    from generalad.apps.report_tables import render_table
    from generalad.defaults import default_reports_root
    from storage.reports import ReportStore

    args.reports = args.reports or default_reports_root()
    frame = ReportStore(args.reports).read_metrics()
    if frame.empty:
        raise GeneralADError(f"no report rows in {args.reports}")
    datasets = None
    if args.suite:
        from flows.suites import get_suite

        datasets = get_suite(args.suite).datasets()
    print(
        render_table(
            frame,
            metric=args.metric,
            selection=args.selection,
            datasets=datasets,
            with_paper=not args.no_paper,
            fmt=args.fmt,
        )
    )
    return 0


COMMANDS = {"reproduce": _cmd_reproduce, "report": _cmd_report}
