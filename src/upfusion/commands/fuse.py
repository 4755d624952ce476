"""``upfusion fuse``: fuse image pairs (two files, or folders paired by file stem) into one image each."""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import add_compile_option

DESCRIPTION = """\
Fuses registered image pairs: A (visible, MRI or phase contrast) with B (infrared, CT, PET,
SPECT or GFP). --a and --b are two files, or two folders whose images are paired by file
stem (the name without its extension: vis/0001.png goes with ir/0001.jpg), never by listing
order. Each result is OUT/<stem><extension of A> (or --format), of the sources' size. For
two files, --out may also name the result file itself (--out fused.png).

Colour: the network fuses the luma; the colour of the source that has colour (A first) is
put back in YCbCr (BT.601, full range): RGB visible + grey infrared gives RGB, PET/SPECT
pseudo-colour + MRI gives RGB, grey + grey gives grey. A 3-channel file with equal channels
is grey. 16-bit PNG/TIFF are read at full depth and written at 16 bits (PNG, TIFF or PGM
output).
"""

EPILOG = """\
Existing complete outputs are skipped (an interrupted run resumes where it stopped) unless
--overwrite. Every output is written under a temporary name, then renamed, so no file is
ever half-written. A bad pair (unreadable file, sizes that differ) stops the run with a
one-line error naming the file, or with --keep-going is reported at the end (exit code 1).

Several processes or GPUs, one or many machines: every process takes the pairs whose stem
hashes to its rank, so each pair is fused exactly once:
  torchrun --nproc-per-node 4 -m upfusion fuse --vis VIS --ir IR --out OUT

examples:
  upfusion fuse --vis MSRS/vi --ir MSRS/ir --out fused/
  upfusion fuse --mri mri.png --pet pet.png --out fused/ --format png
  upfusion fuse --vis street.png --ir street_ir.png --out street_fused.png
  upfusion fuse --vis big_vis.png --ir big_ir.png --out fused/ --tile 1024
  upfusion fuse --a a/ --b b/ --out out/ --weights runs/exp1/final.json --device cuda --precision bf16
  upfusion fuse --a a/ --b b/ --out out/ --device cuda --precision bf16 --batch-size 8   # GPU, many pairs
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..imaging import FORMATS

    p = subparsers.add_parser(
        "fuse",
        help="fuse image pairs (files, or folders paired by file name) into one image each",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--a",
        "--vis",
        "--mri",
        "--pc",
        dest="a",
        required=True,
        metavar="PATH",
        help="first source: an image file or a folder (visible, MRI, phase contrast)",
    )
    p.add_argument(
        "--b",
        "--ir",
        "--ct",
        "--pet",
        "--spect",
        "--gfp",
        dest="b",
        required=True,
        metavar="PATH",
        help="second source: an image file or a folder (infrared, CT, PET, SPECT, GFP)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR|FILE",
        help="folder for the fused images (created if missing); for two files also the result's file name",
    )
    p.add_argument(
        "--weights",
        metavar="NAME|PATH",
        help="bundled weights name, or a checkpoint (.json/.safetensors/stem/folder); "
        "default: the bundled default weights",
    )
    p.add_argument(
        "--method",
        default="upfusion",
        metavar="NAME",
        help="'upfusion' (the network, default) or a classic method of upfusion.baselines: average, maximum, "
        "laplacian, dwt or gff",
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|cuda[:N]",
        help="where the network runs (default auto: CUDA if available; under torchrun, cuda:LOCAL_RANK)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32 (default); bf16/fp16 autocast (fp16 CUDA only; bf16 pays on CPUs with AVX512-BF16 or AMX)",
    )
    p.add_argument(
        "--color-from",
        default="auto",
        choices=["auto", "a", "b", "none"],
        help="which source gives the colour (default auto: A if it has colour, else B); none = grey",
    )
    p.add_argument(
        "--format",
        choices=sorted({s.lstrip(".") for s in FORMATS}),
        help="output file format (default: the extension of the A file)",
    )
    p.add_argument(
        "--resize-b-to-a",
        action="store_true",
        help="resample B (bicubic) to A's size when they differ, instead of an error",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the network (default: PyTorch's choice, one per core)",
    )
    p.add_argument("--overwrite", action="store_true", help="fuse again even where a complete output exists")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="on a bad pair, go on with the others and report all failures at the end (exit 1)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="pairs of one size per network call (default 1; larger helps on GPUs)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="threads reading and writing images while the network runs (default 2)",
    )
    p.add_argument(
        "--tile",
        default="auto",
        metavar="auto|0|SIZE",
        help="fuse large images in SIZE x SIZE tiles that share the whole image's statistics (a multiple "
        "of 8, >= 64); auto (default): only when an image would not fit in the free memory; 0: never",
    )
    p.add_argument(
        "--overlap",
        type=int,
        metavar="PX",
        help="pixels shared by neighbouring tiles: a multiple of 8, at most half the tile (default 64, or half "
        "the tile where that is less)",
    )
    p.add_argument(
        "--upscale",
        default="auto",
        metavar="auto|N",
        help="fuse each pair enlarged N times (each pixel an N x N block) and average the blocks back: N^2 "
        "times the work; auto (default): the weights' own factor (2 for the bundled weights, which fuse "
        "better so) for images of up to half a megapixel (640x480: yes, 1024x768: no), 1 above",
    )
    add_compile_option(
        p,
        "torch.compile each Restormer block (default scope; about a minute per image size and batch size) or "
        "the whole model (many minutes); pays on GPUs with --batch-size, not on CPUs, nor on Hopper GPUs in bf16 "
        "or fp16, where the fused kernels run eagerly and faster; falls back to eager on "
        "failure; compiled code is kept for about two image sizes, further sizes run eagerly",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay the network from a CUDA graph recorded on the second batch of each image size and batch "
        "size (at most two kept): one launch instead of thousands, for streams of one size; CUDA only, not "
        "with --compile",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="print each file written")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Job:
    """One pair to fuse and where its result goes."""

    stem: str
    a: Path
    b: Path
    output: Path


def find_pairs(a: str, b: str) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """(stem, A file, B file) for two files or two folders (paired by stem), and the unmatched files."""
    from ..errors import UpfusionError
    from ..pairing import pair_by_stem

    a_path, b_path = Path(a), Path(b)
    for path in (a_path, b_path):
        if not path.exists():
            raise UpfusionError(f"{path}: no such file or directory")
    if a_path.is_file() and b_path.is_file():
        return [(a_path.stem, a_path, b_path)], []
    if a_path.is_dir() and b_path.is_dir():
        pairing = pair_by_stem(a_path, b_path)
        if not pairing.pairs:
            raise UpfusionError(
                f"{a_path} and {b_path}: no pairs (no image file stem appears in both folders; "
                f"{len(pairing.unmatched)} unmatched image(s))"
            )
        return [(stem, pa, pb) for stem, (pa, pb) in pairing.pairs], pairing.unmatched
    raise UpfusionError(f"{a_path} and {b_path}: give two files or two folders, not one of each")


def output_file(out: str, fmt: str | None, a: str) -> Path | None:
    """The output file when two files are fused and ``--out`` names an image file, else None (a folder).

    ``--out fused.png`` is that file; ``--out fused``, ``--out fused/`` or an existing folder is a folder.
    """
    from ..errors import UpfusionError
    from ..imaging import FORMATS

    path = Path(out)
    if not Path(a).is_file() or path.is_dir() or out.endswith(("/", "\\")) or path.suffix.lower() not in FORMATS:
        return None
    if fmt and FORMATS[f".{fmt}"] != FORMATS[path.suffix.lower()]:
        raise UpfusionError(f"{path}: the file's extension and --format {fmt} disagree; give one of them")
    return path


def prepare_output_dir(out: str, inputs: list[str]) -> Path:
    """Creates ``out`` if needed and proves it writable by writing (and removing) a probe file."""
    import tempfile

    from ..errors import UpfusionError

    path = Path(out)
    for source in inputs:
        if Path(source).is_dir() and path.resolve() == Path(source).resolve():
            raise UpfusionError(f"{path}: output folder is an input folder; choose another --out")
    if path.exists() and not path.is_dir():
        raise UpfusionError(f"{path}: exists and is not a folder; --out must name a folder here")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UpfusionError(f"{path}: output folder not writable ({exc.strerror or exc})") from None
    return path


def is_complete(path: Path) -> bool:
    """An output already there and readable to its end (a file cut short by something else is redone).

    Outputs are renamed into place only once fully written; decoding the pixels (not only the
    header) also catches a truncated file copied or written there by another program.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.size[0] > 0
    except Exception:
        return False


def run(args: argparse.Namespace) -> int:
    from ..distributed import current_rank

    rank = current_rank()
    who = f"upfusion fuse [rank {rank.rank}/{rank.world_size}]" if rank.is_distributed else "upfusion fuse"
    with _warnings_as_lines(who):
        return _run(args, rank, who)


def _run(args: argparse.Namespace, rank: Any, who: str) -> int:
    from tqdm import tqdm

    from ..distributed import shard
    from ..errors import UpfusionError
    from ..fuse import load

    if args.batch_size < 1 or args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise UpfusionError("--batch-size, --workers and --threads must be at least 1")
    if args.method != "upfusion" and args.weights:
        raise UpfusionError(f"--weights is for the network; method {args.method!r} takes no weights")

    pairs, unmatched = find_pairs(args.a, args.b)
    if unmatched and rank.rank == 0:
        print(
            f"{who}: warning: {len(unmatched)} file(s) without a partner of the same stem, not fused:",
            file=sys.stderr,
        )
        for path in unmatched:
            print(f"  {path}", file=sys.stderr)
    out_file = output_file(args.out, args.format, args.a)
    out_dir = prepare_output_dir(str(out_file.parent) if out_file else args.out, [args.a, args.b])
    jobs = [
        Job(stem, pa, pb, out_file or out_dir / (stem + (f".{args.format}" if args.format else pa.suffix)))
        for stem, pa, pb in shard(pairs, rank, key=lambda pair: pair[0])
    ]
    from ..imaging import output_format

    for job in jobs:  # fail before any work: a format that cannot be written, a source about to be replaced
        try:
            output_format(job.output.suffix)
        except UpfusionError as exc:  # the extension comes from the A file: say which, and the way out
            raise UpfusionError(f"{job.output}: {exc}; choose one with --format") from None
        if job.output.resolve() in (job.a.resolve(), job.b.resolve()):
            raise UpfusionError(f"{job.output}: the output would replace its own source; choose another --out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    todo = [job for job in jobs if args.overwrite or not is_complete(job.output)]
    skipped = len(jobs) - len(todo)

    failures: list[tuple[Job, str]] = []
    written = 0
    if todo:
        if args.method == "upfusion":
            fuser = load(
                args.weights,
                device=args.device,
                precision=args.precision,
                tile=args.tile,
                overlap=args.overlap,
                compile=args.compile,
                upscale=args.upscale,
                cuda_graphs=args.cuda_graphs,
            )
        else:
            fuser = load(method=args.method)
        with tqdm(total=len(todo), desc=who, unit="pair", disable=args.quiet, position=rank.rank) as progress:
            written = _fuse_jobs(todo, fuser, args, progress, failures, who)

    summary = f"{who}: fused {written} pair(s) into {out_file or out_dir}"
    extras = [f"{skipped} already complete"] if skipped else []
    if failures:
        extras.append(f"{len(failures)} failed")
    print(summary + (f" ({', '.join(extras)})" if extras else ""))
    if failures:
        print(f"{who}: error: {len(failures)} of {len(jobs)} pair(s) failed:", file=sys.stderr)
        for _, message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def _fuse_jobs(
    jobs: list[Job],
    fuser: Any,
    args: argparse.Namespace,
    progress: Any,
    failures: list[tuple[Job, str]],
    who: str,
) -> int:
    """Reads pairs ahead and writes results behind on ``args.workers`` threads while the network runs."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from ..errors import UpfusionError
    from ..fuse import align
    from ..imaging import read_image, write_image

    def read_pair(job: Job) -> tuple[Any, Any]:
        return align(read_image(job.a), read_image(job.b), args.resize_b_to_a)

    def fail(job: Job, exc: BaseException) -> None:
        if not args.keep_going:
            raise exc if isinstance(exc, UpfusionError) else UpfusionError(str(exc))
        failures.append((job, str(exc)))
        progress.update()

    pool = ThreadPoolExecutor(max_workers=args.workers)
    reads: deque[tuple[Job, Future]] = deque()
    writes: deque[tuple[Job, Future]] = deque()
    remaining = iter(jobs)
    written = 0

    def read_ahead() -> None:
        while len(reads) < args.batch_size + args.workers:
            job = next(remaining, None)
            if job is None:
                return
            reads.append((job, pool.submit(read_pair, job)))

    def finish_writes(keep: int) -> None:
        nonlocal written
        while len(writes) > keep:
            job, future = writes.popleft()
            try:
                future.result()
            except UpfusionError as exc:
                fail(job, exc)
                continue
            written += 1
            progress.update()
            if args.verbose:
                progress.write(f"{who}: wrote {job.output}")

    def fuse(batch: list[tuple[Job, Any, Any]]) -> None:
        try:
            results = fuser.fuse_sources([(a, b) for _, a, b in batch], color_from=args.color_from)
        except (UpfusionError, RuntimeError) as exc:
            for job, _, _ in batch:
                fail(job, _pair_error(job, exc))
            return
        for (job, _, _), fused in zip(batch, results, strict=True):
            writes.append((job, pool.submit(write_image, job.output, fused)))
        finish_writes(keep=2 * args.workers)

    try:
        batch: list[tuple[Job, Any, Any]] = []
        read_ahead()
        while reads:
            job, future = reads.popleft()
            read_ahead()
            try:
                a, b = future.result()
            except UpfusionError as exc:
                fail(job, exc)
                continue
            batch.append((job, a, b))
            if len(batch) == args.batch_size:
                fuse(batch)
                batch = []
        if batch:
            fuse(batch)
        finish_writes(keep=0)
    finally:
        for _, future in reads:  # stopped early: drop the reads, but let every result already fused be written
            future.cancel()
        pool.shutdown(wait=True)
    return written


def _pair_error(job: Job, exc: BaseException) -> Exception:
    from ..errors import UpfusionError

    if isinstance(exc, UpfusionError):
        return exc
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return UpfusionError(f"{job.a} + {job.b}: fusing failed ({exc.__class__.__name__}: {first_line})")


@contextmanager
def _warnings_as_lines(who: str) -> Iterator[None]:
    """Python warnings (alpha channel ignored, bf16 on CPU...) printed as one line each, like errors."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        print(f"{who}: warning: {message}", file=sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved
