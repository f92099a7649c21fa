"""The ``data-report`` command: load a data source, write its text/JSON report and its figures.

It sits above :mod:`cxr_utils.data` (loading, the report text) and :mod:`cxr_utils.plots` (figures),
so that the data package never imports plotting code.
"""

from __future__ import annotations

from typing import Any

from . import data


def cli_add_arguments(parser: Any) -> None:
    """The ``data-report`` flags on an argparse parser (the same options as ``data.load``)."""
    parser.add_argument("source", help=f"data source: {data.SOURCE_FORMS}")
    parser.add_argument("--out", default="results/data-report", help="output folder (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images (default: 64)")
    parser.add_argument("--classes", default=None, help="comma-separated class names to keep, in label order")
    parser.add_argument("--crop", default="center", choices=("center", "none"),
                        help="center: square centre crop before resizing; none: resize directly")
    parser.add_argument("--equalize", action="store_true", help="histogram-equalise each image")
    parser.add_argument("--bit-scaling", default="per-image", choices=("per-image", "dataset", "fixed"),
                        help="how images above 8 bits become 8-bit (default: %(default)s; see docs/data.md)")
    parser.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicates")
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write the cache")
    parser.add_argument("--cache-dir", default="data/cache", help="cache folder (default: %(default)s)")


def cli_run(args: Any) -> int:
    """Load ``args.source``, write report.json/.txt, montage.png and histograms.png, print the report.

    Returns 0; problems are one-line ``CXRError``s, printed by ``cxr_utils.cli``.
    """
    from . import plots

    ds = data.load(args.source, image_size=args.image_size, classes=args.classes, crop=args.crop,
                   equalize=args.equalize, bit_scaling=args.bit_scaling, dedup=args.dedup, cache=args.cache,
                   cache_dir=args.cache_dir)
    paths = plots.write_data_report(ds, args.out)
    print(ds.report.format())
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
