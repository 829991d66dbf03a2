#!/usr/bin/env python
"""Download a public breast-ultrasound data set for wsbus: ``python data/fetch.py busi|busbra [--dest DIR]``.

The archive's SHA-256 is verified (pooch) and it is unpacked with ``wsbus.data.download.safe_extract``.
Taught in ``book/09_real_data.md``.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

try:
    from wsbus.data.download import DATASETS, fetch
    from wsbus.data.formats import DataError
except ImportError:  # run from a checkout without installing wsbus
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from wsbus.data.download import DATASETS, fetch
    from wsbus.data.formats import DataError


def _catalogue() -> str:
    lines = ["data sets:"]
    for info in DATASETS.values():
        lines.append(f"  {info.name}: {info.title}")
        for label, value in (("source", info.source), ("licence", info.licence), ("cite", info.citation),
                             ("sha256", info.sha256 or "none pinned: pass --sha256"), ("load with", info.loader)):
            lines.append(textwrap.fill(value, width=100, initial_indent=f"    {label + ':':<11}",
                                       subsequent_indent=" " * 15))
    lines.append("SNUBH, the paper's data set, is not public; a VOC-BUS copy is read with wsbus.data.load_voc.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python data/fetch.py", description=__doc__.splitlines()[0],
        epilog=_catalogue(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(DATASETS), help="which data set to download")
    parser.add_argument("--dest", default="data", help="folder for the archive and the unpacked data (default: data)")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of the archive (needed when none is pinned; replaces the pinned one)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    args = parser.parse_args(argv)
    info = DATASETS[args.name]
    try:
        folder = fetch(args.name, args.dest, progress=not args.no_progress, sha256=args.sha256)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{info.name} is in {folder}\n  licence: {info.licence}\n  cite: {info.citation}\n"
          f"  load it with: {info.loader}({str(folder)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
