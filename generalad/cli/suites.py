"""`generalad reproduce` and `generalad report`: a suite through the Prefect flow, and its paper-style table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generalad.cli.common import add_device_option, add_precision_option
from generalad.defaults import SELECTIONS
from generalad.errors import GeneralADError

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `reproduce` and `report`."""
    _add_reproduce_parser(sub)
    _add_report_parser(sub)


def _add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """Register `reproduce`: which suite and where its inputs and outputs are, then how it runs."""
    reproduce = sub.add_parser("reproduce", help="run the reproduce-all flow on a suite (the main job)")
    reproduce.add_argument("--suite", default=None, help="table1..table5, fig4, quickstart (default), smoke")
    reproduce.add_argument(
        "--suite-file",
        default=None,
        help="your own suite as TOML: name, description, [[entries]] of the built-in suites' fields "
        "(examples/my_suite.toml)",
    )
    reproduce.add_argument(
        "--reports",
        default=None,
        help="report store, local path or fsspec URL (default $GENERALAD_REPORTS, else ./reports)",
    )
    reproduce.add_argument("--store", default=None, help="feature store root (default ./stores)")
    reproduce.add_argument(
        "--weights",
        default="auto",
        help="'auto' (pretrained if available; else random for quickstart/smoke, an error for paper suites), "
        "'hub', 'random', or a file",
    )
    reproduce.add_argument(
        "--config",
        default=None,
        help="TOML with the dataset roots ([datasets], default ./generalad.toml) and optionally these options "
        "([reproduce]; flags override it)",
    )
    _add_reproduce_run_options(reproduce)


def _add_reproduce_run_options(reproduce: argparse.ArgumentParser) -> None:
    """reproduce's cluster, run id, device and precision, plan, cache and timeout options."""
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
    add_device_option(reproduce)
    add_precision_option(reproduce, what="training and scoring")
    add_precision_option(
        reproduce, "--extract-precision", what="backbone (part of the store key unless fp32)"
    )
    reproduce.add_argument(
        "--plan",
        action="store_true",
        help="print what the suite would do and an estimated wall time on this device (a short calibration); "
        "extract and train nothing, no Prefect server",
    )
    reproduce.add_argument(
        "--retrain",
        action="store_true",
        help="train every class again instead of reading cached class results back (the cache is rewritten)",
    )
    reproduce.add_argument(
        "--task-timeout",
        type=float,
        default=None,
        help="seconds per class task (default: 30x its estimate, at least 1800)",
    )


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    """Register `report`: the paper-style table (or a plain one) of a report store."""
    report = sub.add_parser("report", help="render the paper-style table from a report store")
    report.add_argument(
        "--reports", default=None, help="report store (default $GENERALAD_REPORTS, else ./reports)"
    )
    report.add_argument(
        "--suite",
        default=None,
        help="only the rows of this suite, in the paper's layout (table2: pixel AUROC under last and "
        "best_on_test_pixel; table3: mean ± std over seeds; table4/table5: a row per variant; fig4: the sweeps)",
    )
    report.add_argument("--metric", default="image_auroc", help="metric of the plain table (without --suite)")
    report.add_argument("--selection", default="last", choices=SELECTIONS)
    report.add_argument("--plot-dir", default=None, help="with --suite fig4: also write the sweep plots here")
    report.add_argument("--format", dest="fmt", default="markdown", choices=("markdown", "csv"))
    report.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")


def _cmd_plan(args: argparse.Namespace) -> int:
    from flows.plan_build import plan_suite
    from flows.plan_report import render_plan
    from generalad.defaults import default_store_root

    plan = plan_suite(
        args.suite or "quickstart",
        config=args.config,
        store=args.store or default_store_root(),
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        extract_precision=args.extract_precision,
        eval_every_epoch=not args.no_epoch_eval,
    )
    print(render_plan(plan))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flows.runtime import ensure_prefect_api
    from flows.suite_file import load_suite_file
    from generalad.defaults import default_reports_root, default_store_root

    args.reports = args.reports or default_reports_root()

    if args.suite and args.suite_file:
        raise GeneralADError("give either --suite or --suite-file, not both")
    if args.suite_file:
        load_suite_file(args.suite_file)  # validated before any Prefect start-up

    if args.plan:
        if args.suite_file:
            raise GeneralADError("--plan takes a named --suite, not --suite-file")
        return _cmd_plan(args)
    with ensure_prefect_api() as api:
        from flows.reproduce import SuiteFailed, reproduce_all

        print(f"Prefect API: {api.url}", file=sys.stderr)
        try:
            summary = reproduce_all(
                suite=args.suite or "quickstart",
                suite_file=str(Path(args.suite_file).resolve()) if args.suite_file else None,
                reports=args.reports,
                store=args.store or default_store_root(),
                weights=args.weights,
                config=args.config,
                dask_address=args.dask_address,
                n_workers=args.workers,
                eval_every_epoch=not args.no_epoch_eval,
                run_id=args.run_id,
                device=args.device,
                precision=args.precision,
                extract_precision=args.extract_precision,
                retrain=args.retrain,
                task_timeout_s=args.task_timeout,
            )
        except SuiteFailed as exc:
            if exc.summary.get("table"):
                print(exc.summary["table"])  # the classes that did run
            print(f"error: {exc}", file=sys.stderr)
            print(f"rows of the tasks that ran are in {args.reports}", file=sys.stderr)
            print(api.open_ui_hint(), file=sys.stderr)
            return 1
        finally:
            _flush_prefect_logs()
    print(summary["table"])
    print(
        f"\n{summary['tasks']} class tasks: {summary['trained']} trained, {summary['reused']} read back from the "
        f"class-result cache ({summary['seconds']:.1f} s in the flow)"
    )
    print(
        f"reports: {summary['reports']} (run id {summary['run_id']}); `generalad report --reports {args.reports}`"
    )
    print(api.open_ui_hint())
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
    if not args.suite:
        print(
            render_table(
                frame,
                metric=args.metric,
                selection=args.selection,
                with_paper=not args.no_paper,
                fmt=args.fmt,
            )
        )
        return 0
    from flows.suites import get_suite
    from generalad.apps.suite_tables import fig4_plots, render_suite

    get_suite(args.suite)  # an unknown name fails listing the suites
    if "suite" not in frame.columns or not (frame["suite"] == args.suite).any():
        raise GeneralADError(
            f"no rows of suite {args.suite!r} in {args.reports} (run `generalad reproduce --suite {args.suite}`)"
        )
    print(render_suite(frame, args.suite, selection=args.selection, fmt=args.fmt))
    if args.plot_dir and args.suite == "fig4":
        from pathlib import Path

        out = Path(args.plot_dir)
        out.mkdir(parents=True, exist_ok=True)
        for parameter, image in fig4_plots(frame, selection=args.selection).items():
            image.save(out / f"image_auroc_vs_{parameter}.png")
            print(f"wrote {out / f'image_auroc_vs_{parameter}.png'}", file=sys.stderr)
    return 0


COMMANDS = {"reproduce": _cmd_reproduce, "report": _cmd_report}
