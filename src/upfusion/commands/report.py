"""``upfusion report``: several methods' fused folders on one dataset -> comparison table and picture grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Scores the fused images of every method (--method NAME=DIR, paired with the sources of A and B
by file stem, as upfusion eval does) and writes the paper-style comparison of the means:

  OUT/table.md   methods x metrics, the best value of each column in bold (also printed)
  OUT/table.csv  the same at full precision, plus a 'best' column naming the metrics where
                 the method is best
  OUT/grid.png   for a few image pairs: source A, source B and each method's result
                 (needs matplotlib: pip install 'upfusion[report]')

All metrics are higher-is-better. Every method must have a fused image for the same pairs;
means over different images are not comparable.
"""

EPILOG = """\
example:
  upfusion fuse --method gff --a MSRS/vi --b MSRS/ir --out runs/gff
  upfusion report --a MSRS/vi --b MSRS/ir --method GFF=runs/gff --method UP-Fusion=runs/upf \\
      --metrics paper --out report/ --pairs 00004N,00123D
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="compare several methods' fused folders: markdown/CSV table and a picture grid",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", required=True, metavar="DIR", help="first source images (e.g. visible)")
    p.add_argument("--b", required=True, metavar="DIR", help="second source images (e.g. infrared)")
    p.add_argument(
        "--method",
        required=True,
        action="append",
        metavar="NAME=DIR",
        help="a method's name and its folder of fused images; repeat for each method (table order)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for table.md, table.csv, grid.png")
    p.add_argument(
        "--metrics",
        default="paper",
        metavar="SET",
        help="'paper' (default: Q_NCIE, Q_P, VIF, SSIM, Qabf), 'all', or names such as VIF,SSIM,EN",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pairs", metavar="STEM,STEM", help="image pairs shown in the grid, by file stem")
    which.add_argument(
        "--grid-pairs",
        type=int,
        default=3,
        metavar="N",
        help="show the first N pairs (by stem) in the grid (default 3; 0: no grid)",
    )
    p.add_argument("--panel-width", type=int, default=240, metavar="PX", help="grid panel width (default 240)")
    p.add_argument("--title", default="", help="a title for the table (e.g. the dataset's name)")
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes scoring images (default: all cores)"
    )
    p.set_defaults(func=run)


def parse_methods(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` options as (name, folder); an UpfusionError names a bad or repeated one."""
    from ..errors import UpfusionError

    methods: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise UpfusionError(f"--method {spec!r}: expected NAME=DIR, e.g. --method GFF=runs/gff")
        if any(name == known for known, _ in methods):
            raise UpfusionError(f"--method {spec!r}: the name {name!r} is used twice")
        path = Path(folder)
        if not path.is_dir():
            raise UpfusionError(f"{path}: fused folder of method {name} is not a directory")
        methods.append((name, path))
    return methods


def grid_stems(args: argparse.Namespace, folders: list[Path]) -> list[str]:
    """The stems shown in the grid: --pairs (each checked in every folder) or the first --grid-pairs."""
    from ..errors import UpfusionError
    from ..pairing import list_images, pair_by_stem

    if args.pairs is not None:
        stems = [s.strip() for s in args.pairs.split(",") if s.strip()]
        if not stems:
            raise UpfusionError(f"--pairs {args.pairs!r}: no stem given")
        listings = [(folder, list_images(folder)) for folder in folders]
        for stem in stems:
            for folder, listing in listings:
                if stem not in listing:
                    raise UpfusionError(f"--pairs: {folder} has no image with the stem {stem!r}")
        return stems
    if args.grid_pairs < 0:
        raise UpfusionError(f"--grid-pairs: must be 0 or more, got {args.grid_pairs}")
    return [stem for stem, _ in pair_by_stem(*folders).pairs[: args.grid_pairs]]


def check_out(out: Path, filenames: list[str]) -> None:
    """Fails before the slow scoring where the report could not be written into ``out``."""
    from .output_paths import check_output_file, check_output_folder

    check_output_folder(out, "--out")
    for filename in filenames:
        check_output_file(out / filename, "--out")


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_bytes_atomic
    from ..errors import UpfusionError
    from ..evaluate import evaluate_folders
    from ..pairing import list_images
    from ..pretrained.extras import require
    from ..report import picture_grid, table_from_results

    a_dir, b_dir, out = Path(args.a), Path(args.b), Path(args.out)
    methods = parse_methods(args.method)
    folders = [a_dir, b_dir, *(folder for _, folder in methods)]
    stems = grid_stems(args, folders)  # checked before the slow scoring
    if stems:
        require("matplotlib", "report", "the picture grid (grid.png; --grid-pairs 0 skips it)")
    if args.panel_width < 8:
        raise UpfusionError(f"--panel-width: must be at least 8 pixels, got {args.panel_width}")
    check_out(out, ["table.md", "table.csv", *(["grid.png"] if stems else [])])

    results = {}
    for name, folder in methods:
        print(f"upfusion report: scoring {name} ({folder})", file=sys.stderr)
        result = evaluate_folders(a_dir, b_dir, folder, metrics=args.metrics, workers=args.workers, progress=True)
        if result.unmatched:
            shown = ", ".join(Path(p).name for p in result.unmatched[:5])
            more = ", ..." if len(result.unmatched) > 5 else ""
            print(
                f"upfusion report: warning: {name}: {len(result.unmatched)} file(s) without a partner "
                f"of the same stem, not scored ({shown}{more})",
                file=sys.stderr,
            )
        results[name] = result
    table = table_from_results(results, title=args.title, note=f"A = {a_dir}, B = {b_dir}")

    # Everything is built before anything is written, so a failure leaves no partial report.
    # surrogateescape: a folder name that is not UTF-8 (in the table's note) is written as its bytes
    text = {"table.md": table.to_markdown(), "table.csv": table.to_csv()}
    files = {name: content.encode("utf-8", "surrogateescape") for name, content in text.items()}
    if stems:
        listings = [list_images(folder) for folder in folders]
        rows = [(stem, [listing[stem] for listing in listings]) for stem in stems]
        labels = [a_dir.name or "A", b_dir.name or "B", *(name for name, _ in methods)]
        files["grid.png"] = picture_grid(rows, labels, panel_width=args.panel_width)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for filename, data in files.items():
            write_bytes_atomic(out / filename, data)
    except OSError as exc:  # no permission, a full disk
        raise UpfusionError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    sys.stdout.write(table.to_markdown())
    print(f"upfusion report: wrote {', '.join(str(out / f) for f in files)}", file=sys.stderr)
    if not stems and (out / "grid.png").exists():  # kept: it may be wanted, but it is not this report's
        print(f"upfusion report: note: {out / 'grid.png'} is from an earlier report (left as it was)", file=sys.stderr)
    return 0
