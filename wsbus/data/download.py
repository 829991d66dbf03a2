"""Download public breast-ultrasound data sets with a pinned SHA-256, and unpack archives safely.

Taught in ``book/09_real_data.md``.

:func:`fetch` downloads with :func:`pooch.retrieve` (which verifies ``known_hash`` and keeps the file cached)
and unpacks with :func:`safe_extract`, which checks every entry *before* writing anything and refuses entries
that would land outside the destination: absolute paths, ``..`` components, symbolic or hard links pointing
outside, device files and FIFOs.
"""
from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Union

from .formats import DataError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a public data set comes from and what it unpacks to.

    Attributes
    ----------
    name : short name used by ``fetch`` and ``data/fetch.py``.
    title : full name.
    url : direct download address of the archive.
    filename : name of the archive file.
    sha256 : pinned SHA-256 of the archive, or None when no verified hash is known (then ``fetch`` needs one).
    sha256_source : where the pinned hash comes from.
    licence : the licence the data are published under.
    citation : what to cite when using the data.
    source : the human-readable page of the data set.
    layout : the folder the archive unpacks to, relative to ``dest`` (what the wsbus loader reads).
    loader : the wsbus loader for the unpacked folder.
    """

    name: str
    title: str
    url: str
    filename: str
    sha256: Optional[str]
    sha256_source: str
    licence: str
    citation: str
    source: str
    layout: str
    loader: str


#: The downloadable data sets. SNUBH (the paper's data) is not public; load it with ``load_voc``.
DATASETS: Dict[str, DatasetInfo] = {
    "busi": DatasetInfo(
        name="busi",
        title="BUSI: Breast Ultrasound Images Dataset (780 images: 437 benign, 210 malignant, 133 normal)",
        url="https://scholar.cu.edu.eg/Dataset_BUSI.zip",
        filename="Dataset_BUSI.zip",
        sha256="b2ce09f6063a31a73f628b6a6ee1245187cbaec225e93e563735691d68654de7",
        sha256_source="pinned by torch-em (constantinpape/torch-em, torch_em/data/datasets/medical/busi.py) "
                      "for the same URL; not re-computed by wsbus",
        licence="CC0 1.0 Public Domain (as published by the authors; see the source page)",
        citation="W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy. Dataset of breast ultrasound images. "
                 "Data in Brief 28:104863, 2020. doi:10.1016/j.dib.2019.104863",
        source="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        layout="Dataset_BUSI_with_GT",
        loader="wsbus.data.load_busi",
    ),
    "busbra": DatasetInfo(
        name="busbra",
        title="BUS-BRA: breast ultrasound dataset with BI-RADS categories (1,875 images, 1,064 patients)",
        url="https://zenodo.org/records/8231412/files/BUSBRA.zip?download=1",
        filename="BUSBRA.zip",
        sha256="ba3e6ed19cc37c682d8d39e25435bbf8a555a12cb7e641b5f2117685c95580ff",
        sha256_source="pinned by torch-em (constantinpape/torch-em, torch_em/data/datasets/medical/busbra.py) "
                      "for the same Zenodo file; not re-computed by wsbus",
        licence="CC BY 4.0",
        citation="W. Gomez-Flores, M. J. Gregorio-Calas, W. C. de Albuquerque Pereira. BUS-BRA: A breast "
                 "ultrasound dataset for assessing computer-aided diagnosis systems. Medical Physics 51(4), 2024. "
                 "doi:10.1002/mp.16812. Data: doi:10.5281/zenodo.7730709",
        source="https://doi.org/10.5281/zenodo.7730709",
        layout="BUSBRA",
        loader="wsbus.data.load_busbra",
    ),
}


def _check_name(name: str, archive: Path) -> PurePosixPath:
    """The entry's path relative to dest, or DataError when it is absolute or climbs out with '..'."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":") or path.is_absolute():
        raise DataError(f"{archive}: entry {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise DataError(f"{archive}: entry {name!r} contains '..' and would land outside the destination")
    return path


def _inside(root: Path, target: Path) -> bool:
    root = os.path.realpath(root)
    target = os.path.realpath(target)
    return target == root or target.startswith(root + os.sep)


def safe_extract(archive: PathLike, dest: PathLike) -> List[Path]:
    """Unpack a zip or tar archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) into dest.

    Every entry is checked before anything is written. An entry is refused, with a :class:`DataError` naming it,
    when it has an absolute path, a ``..`` component, is a symbolic or hard link whose target lies outside
    ``dest`` (links in zip archives are refused altogether: ``zipfile`` cannot create them faithfully), or is a
    device file or FIFO.

    Parameters
    ----------
    archive : the archive file (its type is read from its content, not its name).
    dest : the destination folder (created if needed).

    Returns
    -------
    the paths written (files and folders), in archive order.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                rel = _check_name(info.filename, archive)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    link = zf.read(info).decode("utf-8", "replace")
                    where = "outside the destination" if not _inside(dest, (dest / rel).parent / link) else "in a zip"
                    raise DataError(f"{archive}: entry {info.filename!r} is a symbolic link to {link!r} ({where}); "
                                    f"refusing to extract")
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                    raise DataError(f"{archive}: entry {info.filename!r} is a device file or FIFO; refusing to extract")
                if not _inside(dest, dest / rel):
                    raise DataError(f"{archive}: entry {info.filename!r} would land outside {dest}")
            zf.extractall(dest)
            return [dest / _check_name(i.filename, archive) for i in infos]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                rel = _check_name(m.name, archive)
                if not _inside(dest, dest / rel):
                    raise DataError(f"{archive}: entry {m.name!r} would land outside {dest}")
                if m.isdev():
                    raise DataError(f"{archive}: entry {m.name!r} is a device file or FIFO; refusing to extract")
                if m.issym() or m.islnk():
                    kind = "symbolic" if m.issym() else "hard"
                    if m.linkname.startswith("/") or ".." in PurePosixPath(m.linkname.replace("\\", "/")).parts:
                        target_ok = False
                    else:
                        base = (dest / rel).parent if m.issym() else dest
                        target_ok = _inside(dest, base / m.linkname)
                    if not target_ok:
                        raise DataError(f"{archive}: entry {m.name!r} is a {kind} link to {m.linkname!r} outside "
                                        f"the destination; refusing to extract")
                elif not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: entry {m.name!r} has an unsupported type; refusing to extract")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second, independent check
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; every member was checked above
                tf.extractall(dest, members=members)
            return [dest / _check_name(m.name, archive) for m in members]
    raise DataError(f"{archive}: not a zip or tar archive")


def fetch(name: str, dest: PathLike, *, progress: bool = True, sha256: Optional[str] = None,
          extract: bool = True) -> Path:
    """Download a public data set, verify its SHA-256, and unpack it safely.

    Parameters
    ----------
    name : a key of :data:`DATASETS` (``"busi"``, ``"busbra"``).
    dest : folder for the archive and the unpacked data (created if needed); a verified archive already there is
        not downloaded again.
    progress : show a download progress bar (tqdm).
    sha256 : the expected SHA-256 of the archive. Needed when :data:`DATASETS` has no pinned hash; when given, it
        replaces the pinned one (e.g. after the publisher re-packed the archive and you checked the new file).
    extract : unpack the archive with :func:`safe_extract`.

    Returns
    -------
    the unpacked data folder (``dest / layout``), or the archive when ``extract`` is False.

    Raises
    ------
    DataError
        Unknown name, no hash to verify against, a download that fails (offline, unreachable server, HTTP error),
        a download whose hash differs, or an unsafe archive.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    import pooch

    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    info = DATASETS[name]
    known = (sha256 or info.sha256 or "").lower().removeprefix("sha256:")
    if not known:
        raise DataError(f"{name}: wsbus has no verified SHA-256 for {info.url}, so it cannot check that the "
                        f"download is intact and unmodified. Download it once, check it against the publisher "
                        f"({info.source}), then pass sha256=HASH (command line: --sha256 HASH).")
    if len(known) != 64 or any(ch not in "0123456789abcdef" for ch in known):
        raise DataError(f"{name}: {known!r} is not a SHA-256 (64 hexadecimal digits)")
    import requests

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = Path(pooch.retrieve(info.url, known_hash=f"sha256:{known}", fname=info.filename, path=dest,
                                      progressbar=progress))
    except ValueError as exc:  # pooch raises ValueError when the hash does not match
        raise DataError(f"{name}: the downloaded file does not have the expected SHA-256 {known} ({exc}); "
                        f"it was not kept. If the publisher changed the archive, check the new one and pass "
                        f"--sha256.") from exc
    except requests.RequestException as exc:  # offline, DNS, refused, timeout, HTTP 404 ...
        text = " ".join(str(exc).split())
        errno = re.search(r"\[Errno [^\]]+\] [^'\")]+|Failed to resolve '[^']+'|\d{3} [A-Z][^'\"]*Error[^'\"]*", text)
        reason = errno.group(0) if errno else (text[:240] or "no response")
        raise DataError(f"{name}: cannot download {info.url} ({type(exc).__name__}: {reason}); nothing was "
                        f"downloaded. Check the network, or download the file by hand (from {info.source}) to "
                        f"{dest / info.filename} and run this again: it is then checked and unpacked") from None
    if not extract:
        return archive
    safe_extract(archive, dest)
    return dest / info.layout
