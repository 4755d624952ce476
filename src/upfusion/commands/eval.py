"""``upfusion eval``: fusion metrics of a folder of fused images, paired with their sources by file stem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Scores each image of FUSED against the images of the same file stem in A and B (any image
format; colour is turned grey by round(0.299 R + 0.587 G + 0.114 B); 8-bit only) and prints
a markdown table of the means. The metrics reproduce the public MATLAB originals (see
upfusion.metrics); NaN values (e.g. SCD when F equals a source) are left out of a mean and
the number of values that entered it is reported.

metrics (in table order): Q_NCIE, Q_P, VIF, SSIM, Qabf, SSIM_L255, VIFF, Q_G, Q_Y, Q_CB,
Q_MI, Q_TE, EN, SD, SF, AG, MI, SCD, CC, PSNR; "paper" = Q_NCIE, Q_P, VIF, SSIM, Qabf.
"""

EPILOG = """\
A bad triple (unreadable file, sizes that differ, a 16-bit image) stops the run with an error
naming the file, unless --skip-bad is given. Files without a partner in the other folders
are listed in a warning on stderr. Output files are written under a temporary name, then renamed.

example:
  upfusion eval --a MSRS/vi --b MSRS/ir --fused out/ --metrics paper --json scores.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score fused images with fusion metrics (Q_NCIE, Q_P, VIF, SSIM, Qabf, ...)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", required=True, metavar="DIR", help="first source images (e.g. visible)")
    p.add_argument("--b", required=True, metavar="DIR", help="second source images (e.g. infrared)")
    p.add_argument("--fused", required=True, metavar="DIR", help="fused images, named like their sources")
    p.add_argument(
        "--metrics",
        default="paper",
        metavar="SET",
        help="'paper' (default), 'all', or comma-separated names such as VIF,SSIM,EN",
    )
    p.add_argument("--json", metavar="FILE", help="write per-image values, means and counts as JSON (NaN as null)")
    p.add_argument("--csv", metavar="FILE", help="write one row per image plus (mean) and (count) rows as CSV")
    p.add_argument(
        "--compat",
        choices=["cddfuse"],
        help="report the CDDFuse Python evaluator's conventions instead (VIF and SSIM summed over the "
        "sources, MI in nats, AG over H*W, PSNR with peak max(F)); changed metrics are named <NAME>_cddfuse",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes scoring images in parallel (default: all cores)",
    )
    p.add_argument("--per-image", action="store_true", help="also print one table row per image")
    p.add_argument("--skip-bad", action="store_true", help="report bad triples and score the others")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UpfusionError
    from ..evaluate import evaluate_folders
    from .output_paths import check_output_file

    for option, target in (("--json", args.json), ("--csv", args.csv)):
        # Checked, and their folders made, before scoring, so that a long run does not fail at its end.
        if target:
            check_output_file(target, option)
            folder = Path(target).resolve().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UpfusionError(f"{option} {target}: cannot make folder {folder} ({error.strerror})") from None
    result = evaluate_folders(
        args.a,
        args.b,
        args.fused,
        metrics=args.metrics,
        workers=args.workers,
        compat=args.compat,
        on_error="skip" if args.skip_bad else "raise",
        progress=True,
    )
    if result.unmatched:
        print(
            f"upfusion eval: warning: {len(result.unmatched)} file(s) without a partner of the same stem, not scored:",
            file=sys.stderr,
        )
        for path in result.unmatched:
            print(f"  {path}", file=sys.stderr)
    for stem, error in result.skipped.items():
        print(f"upfusion eval: warning: skipped {stem}: {error}", file=sys.stderr)
    if args.json:
        result.write_json(args.json)
    if args.csv:
        result.write_csv(args.csv)
    sys.stdout.write(result.to_markdown(per_image=args.per_image))
    return 0
