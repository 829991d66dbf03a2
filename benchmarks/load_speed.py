"""Loading BUS-BRA and BUSI against decoding their files: ``load_busbra / decode`` and ``load_busi / decode``.

*Decode* opens and decodes, with Pillow, every file the loader reads (images and masks) and does nothing else:
the floor for any loader that reads PNG files. *Load* is the whole loader (csv or folder scan, decoding,
grayscale conversion, boxes from the masks, checks, :class:`wsbus.data.Sample` construction; for BUSI also the
duplicate search of ``dedup=True``, its default, and ``dedup=False`` separately). The goal is a ratio of at
most 1.3. Both run in one process, interleaved, and the medians of the main thread's CPU time (the robust clock
on a shared machine; loading is single-threaded) and of wall time are printed.

BUS-BRA is read from the folder given as argument or from ``WSBUS_BUSBRA``; BUSI from ``--busi`` or
``WSBUS_BUSI``. Without a BUSI folder, ``--synthetic-busi N`` writes a BUSI-shaped folder of N images per
class folder (RGB speckle images of BUSI's typical 500 x 560 size, 0/255 masks with several components, some
``_mask_1`` files) into a temporary directory and times that.

Usage::

    python benchmarks/load_speed.py /work/shared/data/BUSBRA            # or WSBUS_BUSBRA=... python ...
    python benchmarks/load_speed.py --synthetic-busi 60 --reps 5        # BUSI-shaped folder, no BUS-BRA
    python benchmarks/load_speed.py /path/BUSBRA --profile             # + cProfile of one load_busbra
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleave, machine_line, medians  # noqa: E402

from wsbus.data import load_busbra, load_busi  # noqa: E402


def decode_all(files: List[Path]) -> None:
    """Open and decode every file with Pillow (the floor of any PNG loader)."""
    for path in files:
        with Image.open(path) as im:
            im.load()


def busbra_files(root: Path) -> List[Path]:
    base = root / "BUSBRA" if (root / "BUSBRA" / "bus_data.csv").is_file() else root
    return sorted((base / "Images").glob("*.png")) + sorted((base / "Masks").glob("*.png"))


def busi_files(root: Path) -> List[Path]:
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    return sorted(p for c in ("benign", "malignant", "normal") for p in (base / c).glob("*.png"))


def write_synthetic_busi(root: Path, n_per_class: int, seed: int = 0) -> Path:
    """A BUSI-shaped folder: ``n_per_class`` RGB images (500 x 560) with 0/255 masks per class folder.

    The images are smoothed Rayleigh speckle (as incompressible as a real scan, so PNG decoding costs what it
    costs on BUSI) with darker elliptic lesions; masks have 1-3 lesions plus a one-pixel speck, and every fifth
    image of a class an extra ``_mask_1`` file.
    """
    rng = np.random.default_rng(seed)
    base = root / "Dataset_BUSI_with_GT"
    yy, xx = np.ogrid[:500, :560]
    for cls in ("benign", "malignant", "normal"):
        (base / cls).mkdir(parents=True, exist_ok=True)
        for n in range(1, n_per_class + 1):
            speckle = ndimage.uniform_filter(rng.rayleigh(1.0, (500, 560)), size=2)
            image = 40 + 60 * speckle * (1.2 - yy / 700)
            mask = np.zeros((500, 560), np.uint8)
            if cls != "normal":
                for _ in range(int(rng.integers(1, 4))):
                    y, x = int(rng.integers(20, 380)), int(rng.integers(20, 440))
                    h, w = int(rng.integers(20, 110)), int(rng.integers(20, 110))
                    inside = ((yy - y - h / 2) / (h / 2)) ** 2 + ((xx - x - w / 2) / (w / 2)) ** 2 <= 1
                    mask[inside] = 255
                    image[inside] *= 0.4
                mask[int(rng.integers(0, 500)), int(rng.integers(0, 560))] = 255
            gray = np.clip(image, 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([gray] * 3, axis=-1)).save(base / cls / f"{cls} ({n}).png")
            Image.fromarray(mask).save(base / cls / f"{cls} ({n})_mask.png")
            if cls != "normal" and n % 5 == 0:
                extra = np.zeros((500, 560), np.uint8)
                extra[400:440, 50:120] = 255
                Image.fromarray(extra).save(base / cls / f"{cls} ({n})_mask_1.png")
    return base


def compare(name: str, load: Callable[[], object], files: List[Path], reps: int, warmup: int) -> Dict[str, float]:
    """Interleave ``load()`` with decoding ``files``; print and return the median ratios (cpu, wall)."""
    times = interleave({"decode": lambda r: decode_all(files), name: lambda r: load()}, reps=reps, warmup=warmup)
    cpu, wall = medians(times["cpu"]), medians(times["wall"])
    print(f"{len(files)} files; median of {reps}: decode {cpu['decode']:.2f} s CPU ({wall['decode']:.2f} s wall), "
          f"{name} {cpu[name]:.2f} s CPU ({wall[name]:.2f} s wall)")
    ratio = {"cpu": cpu[name] / cpu["decode"], "wall": wall[name] / wall["decode"]}
    print(f"{name} / decode = {ratio['cpu']:.2f}   (wall {ratio['wall']:.2f})")
    return ratio


def main(argv=None) -> Dict[str, Dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("busbra", nargs="?", default=os.environ.get("WSBUS_BUSBRA"),
                   help="BUS-BRA folder (default: $WSBUS_BUSBRA)")
    p.add_argument("--busi", default=os.environ.get("WSBUS_BUSI"), help="BUSI folder (default: $WSBUS_BUSI)")
    p.add_argument("--synthetic-busi", type=int, default=0, metavar="N",
                   help="without --busi: time a synthetic BUSI-shaped folder of N images per class")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="print the cProfile of one load_busbra")
    args = p.parse_args(argv)
    if not args.busbra and not args.busi and not args.synthetic_busi:
        p.error("give a BUS-BRA folder (or set WSBUS_BUSBRA), --busi (WSBUS_BUSI) or --synthetic-busi N")
    print(machine_line(1, "cpu"))
    out: Dict[str, Dict[str, float]] = {}
    if args.busbra:
        root = Path(args.busbra)
        out["load_busbra"] = compare("load_busbra", lambda: load_busbra(root), busbra_files(root),
                                     args.reps, args.warmup)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(load_busbra, root)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    with tempfile.TemporaryDirectory() as tmp:
        busi = Path(args.busi) if args.busi else None
        if busi is None and args.synthetic_busi:
            busi = write_synthetic_busi(Path(tmp), args.synthetic_busi)
            print(f"synthetic BUSI-shaped folder: {args.synthetic_busi} images per class, 500 x 560 RGB")
        if busi is not None:
            files = busi_files(busi)
            out["load_busi"] = compare("load_busi", lambda: load_busi(busi), files, args.reps, args.warmup)
            out["load_busi_nodedup"] = compare("load_busi(dedup=False)", lambda: load_busi(busi, dedup=False),
                                               files, args.reps, args.warmup)
    return out


if __name__ == "__main__":
    main()
