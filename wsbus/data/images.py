"""Reading scans for prediction: PNG, JPEG, TIFF, BMP and DICOM files (multi-frame DICOM frame by frame).

Every reader returns what :func:`wsbus.data.read_gray` returns for the training data: a 2-D ``uint8`` grayscale
array, RGB converted to luminance (ITU-R 601-2), so a scan is seen at prediction time as the training images were.
Ordinary image files go through :func:`~wsbus.data.read_gray` itself; DICOM files (:mod:`pydicom`, the optional
extra ``wsbus[dicom]``) through :func:`read_dicom`, whose rule for turning stored values into 8-bit gray is:

=======================================  ========================================================================
stored pixels                            8-bit gray
=======================================  ========================================================================
``MONOCHROME2``, 8 bits, unsigned        as stored
``MONOCHROME1``                          inverted after the steps above/below (``255 - v``): 0 is white there
more than 8 bits, signed or float        the modality LUT (Rescale Slope/Intercept) then, when the file has a
(``MONOCHROME1/2``)                      VOI window (Window Center/Width) or a VOI LUT, that window
                                         (:func:`pydicom.pixels.apply_voi_lut`), its output range
                                         ``[0, 2**BitsStored - 1]`` mapped linearly onto ``[0, 255]``; without
                                         a window the frame's own minimum..maximum is mapped onto ``[0, 255]``
                                         (a constant frame becomes 0)
``RGB``, ``YBR_FULL``, ``YBR_FULL_422``  decoded to RGB by pydicom (YBR converted to RGB), then luminance;
(and JPEG-compressed YBR)                more than 8 bits per sample are scaled by ``255 / (2**BitsStored - 1)``
``PALETTE COLOR``                        the palette applied (:func:`pydicom.pixels.apply_color_lut`), then as RGB
=======================================  ========================================================================

A PNG or TIFF of more than 8 bits per sample (16-bit PNG, 16-bit or float TIFF) follows the same rule as a DICOM
without a VOI window (:func:`read_image`): gray from the image's own minimum..maximum onto ``[0, 255]``, RGB
scaled by ``255 / (2**bits - 1)``; the same 16-bit pixels give the same 8-bit image from a DICOM, a PNG or a TIFF.

A DICOM file with ``NumberOfFrames`` > 1 (a cine loop) gives one image per frame, named ``<file>#<k>`` with
``k`` counted from 0 (pydicom's frame index). Compressed transfer syntaxes decode when pydicom has a decoder for
them (RLE always; JPEG baseline through Pillow; others need ``pylibjpeg`` or ``gdcm``).

:func:`list_images` expands folders and files into :class:`ImageFile` entries (one per frame) with unique names;
:func:`read_image` reads one entry. Every error is a :class:`~wsbus.data.DataError` naming the file and what is
wrong (missing, not an image, corrupt, a DICOM without pixel data, a frame out of range, no decoder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np

from .formats import DataError
from .voc import read_gray, to_gray

__all__ = ["IMAGE_SUFFIXES", "DICOM_SUFFIXES", "ImageFile", "is_dicom", "dicom_frame_count", "read_dicom",
           "read_image", "list_images", "list_grouped", "frame_label"]

PathLike = Union[str, "os.PathLike[str]"]

#: File endings read with Pillow / tifffile (:func:`wsbus.data.read_gray`).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: File endings read with pydicom; files without an ending are DICOM when they carry the ``DICM`` preamble.
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class ImageFile:
    """One image to read: a file, and for a multi-frame DICOM one of its frames.

    Attributes
    ----------
    path : the file.
    frame : the 0-based frame of a multi-frame DICOM; ``None`` for a single image.
    name : unique among the images listed together: the file name (or its path below the folder it was found
        in), plus ``#<frame>`` for a frame.
    """

    path: Path
    frame: Optional[int]
    name: str


def _pydicom(path: Path):
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path}: a DICOM file, and reading DICOM needs pydicom, which is not installed: pip install "
                        f"'wsbus[dicom]' (or pip install pydicom)") from None
    return pydicom


def is_dicom(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` ending, or no ending and the ``DICM`` preamble at
    byte 128 (DICOM Part 10)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path):
    """The DICOM dataset without its pixel values (large elements deferred), or a DataError naming the file."""
    pydicom = _pydicom(path)
    try:
        return pydicom.dcmread(path, defer_size=1024)
    except Exception as exc:  # InvalidDicomError, EOFError, OSError, ...
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def dicom_frame_count(path: PathLike) -> int:
    """The number of frames of a DICOM file (1 without ``NumberOfFrames``), from its header alone.

    Raises
    ------
    DataError
        naming the file when it is not a readable DICOM file or holds no pixel data.
    """
    path = Path(path)
    ds = _read_header(path)
    if not _has_pixels(ds):
        raise DataError(f"{path}: the DICOM file holds no pixel data (no PixelData element)")
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        raise DataError(f"{path}: NumberOfFrames is not a number: {ds.get('NumberOfFrames')!r}") from None


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _has_window(ds) -> bool:
    return ("WindowCenter" in ds and "WindowWidth" in ds) or "VOILUTSequence" in ds


def _monochrome_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if arr.dtype == np.uint8 and bits <= 8 and not signed:
        return arr  # the display values already
    values = apply_modality_lut(arr, ds)
    if _has_window(ds):
        out = apply_voi_lut(np.asarray(values, dtype=np.float64), ds, index=0)
        return _scale_to_uint8(out, 0.0, float(2 ** bits - 1))
    values = np.asarray(values, dtype=np.float64)
    return _scale_to_uint8(values, float(values.min()), float(values.max()))


def _color_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    bits = int(ds.get("BitsStored", 8) or 8)
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr, 0.0, float(2 ** bits - 1))
    return to_gray(arr)


def read_dicom(path: PathLike, frame: Optional[int] = None) -> np.ndarray:
    """Read a DICOM image (or one frame of a multi-frame file) as a 2-D ``uint8`` grayscale array.

    Parameters
    ----------
    path : the DICOM file.
    frame : the 0-based frame of a multi-frame file; ``None`` reads a single-frame file (a multi-frame file then
        needs a frame).

    Returns
    -------
    ``uint8`` array ``(H, W)``, by the rule of the module's table (MONOCHROME1 inverted, YBR converted to RGB,
    RGB to luminance, more than 8 bits windowed or rescaled).

    Raises
    ------
    DataError
        naming the file: not DICOM, no pixel data, a frame out of range or missing for a multi-frame file, a
        compressed transfer syntax without a decoder, an unsupported photometric interpretation, pydicom missing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    n_frames = dicom_frame_count(path)
    if frame is None and n_frames > 1:
        raise DataError(f"{path}: a multi-frame DICOM file ({n_frames} frames); read one frame at a time")
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise DataError(f"{path}: frame {frame} out of range (the file has {n_frames} frame(s), numbered from 0)")
    pydicom = _pydicom(path)
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = pydicom.Dataset()
    try:
        arr = pixel_array(path, ds_out=ds, index=None if n_frames == 1 else int(frame))
    except Exception as exc:  # no decoder for the transfer syntax, truncated pixel data, ...
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    arr = np.asarray(arr)
    if n_frames == 1 and arr.ndim == 3 and photometric.startswith("MONOCHROME") and arr.shape[0] == 1:
        arr = arr[0]
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise DataError(f"{path}: expected a 2-D {photometric} frame, got shape {arr.shape}")
        gray = _monochrome_to_uint8(arr, ds)
        if photometric == "MONOCHROME1":
            gray = (255 - gray).astype(np.uint8)
    elif photometric == "PALETTE COLOR":
        gray = _color_to_uint8(apply_color_lut(arr, ds), ds)
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataError(f"{path}: expected an H x W x 3 {photometric} frame, got shape {arr.shape}")
        gray = _color_to_uint8(arr, ds)  # pydicom has converted YBR to RGB (its default as_rgb=True)
    else:
        raise DataError(f"{path}: unsupported photometric interpretation {photometric!r} (expected MONOCHROME1, "
                        f"MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422 or PALETTE COLOR)")
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise DataError(f"{path}: empty or malformed image of shape {gray.shape}")
    return np.ascontiguousarray(gray)


_WIDE_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_pixels(path: Path) -> Optional[Tuple[np.ndarray, int]]:
    """``(values, bits per sample)`` of a non-DICOM image with more than 8 bits per sample (16-bit PNG, 16-bit or
    float TIFF), else None: 8-bit files, and files this cannot open, are left to :func:`wsbus.data.read_gray`,
    which reads them or says what is wrong."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) != 1 or len(tif.series) != 1 or tif.pages[0].dtype in (np.uint8, np.bool_):
                    return None
                return tif.asarray(), int(tif.pages[0].bitspersample)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in _WIDE_PIL_MODES:
                return None
            im.load()
            return np.array(im), 16 if im.mode.startswith("I;16") else 32
    except Exception:  # noqa: BLE001 - read_gray reads the file again and reports the error by name
        return None


def _wide_to_uint8(values: np.ndarray, bits: int, path: Path) -> np.ndarray:
    """More than 8 bits per sample to 8-bit gray by :func:`read_dicom`'s rule: gray (like a MONOCHROME2 DICOM
    without a VOI window) from its own minimum..maximum onto ``0 .. 255``; RGB (like an RGB DICOM) scaled by
    ``255 / (2**bits - 1)``, then luminance."""
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"{path}: the image holds NaN or infinite values")
    if values.ndim == 2:
        return _scale_to_uint8(values, float(values.min()), float(values.max()))
    if values.ndim == 3 and values.shape[2] in (3, 4):
        if values.dtype.kind == "f":
            return to_gray(_scale_to_uint8(values[..., :3], float(values.min()), float(values.max())))
        return to_gray(_scale_to_uint8(values[..., :3], 0.0, float(2 ** bits - 1)))
    raise DataError(f"{path}: expected a 2-D grayscale or an RGB image, got shape {values.shape}")


def read_image(path: PathLike, frame: Optional[int] = None) -> np.ndarray:
    """Read a PNG, JPEG, TIFF, BMP or DICOM file (one frame of a multi-frame DICOM) as 2-D ``uint8`` gray.

    DICOM (by :func:`is_dicom`) goes through :func:`read_dicom`. A PNG or TIFF of more than 8 bits per sample
    (16-bit, or float TIFF) is brought to 8 bits by :func:`read_dicom`'s rule for DICOM of more than 8 bits: gray
    from its own minimum..maximum onto ``0 .. 255`` (as a MONOCHROME2 DICOM without a VOI window), RGB scaled by
    ``255 / (2**bits - 1)`` then luminance. Every other file goes through :func:`wsbus.data.read_gray`. Raises
    :class:`DataError` naming the file when it is missing, not an image, corrupt, or (``frame``) not a
    multi-frame DICOM.

    Taught in ``book/14_your_own_scans.md``.
    """
    path = Path(path)
    if is_dicom(path):
        return read_dicom(path, frame)
    if frame is not None:
        raise DataError(f"{path}: frame {frame} asked for, but only DICOM files have frames")
    wide = _wide_pixels(path) if path.is_file() else None
    if wide is not None:
        return np.ascontiguousarray(_wide_to_uint8(wide[0], wide[1], path))
    return read_gray(path)


def _is_image_name(name: str) -> Optional[bool]:
    """True / False from the name alone; None when only the content can tell (no ending: DICOM?)."""
    if name.startswith("."):
        return False
    suffix = os.path.splitext(name)[1].lower()
    if suffix:
        return suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES
    return None


def _folder_images(folder: Path, recursive: bool) -> List[Tuple[Path, str]]:
    """``(path, name below folder)`` of the image files of a folder, sorted by that name; :func:`os.scandir`
    tells files from folders without one ``stat`` per file."""
    found: List[Tuple[Path, str]] = []
    pending = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        pending.append((Path(entry.path), f"{prefix}{entry.name}/"))
                    continue
                if not entry.is_file():
                    continue
                keep = _is_image_name(entry.name)
                if keep or (keep is None and is_dicom(entry.path)):
                    found.append((Path(entry.path), prefix + entry.name))
    return sorted(found, key=lambda item: item[1])


def _expand(path: Path, name: str) -> List[ImageFile]:
    """One entry per frame of a multi-frame DICOM, else one entry. A DICOM whose header cannot be read stays one
    entry: reading it reports the error, so a bad file is reported when it is read, not while listing."""
    if is_dicom(path):
        try:
            n = dicom_frame_count(path)
        except DataError:
            n = 1
        if n > 1:
            return [ImageFile(path, k, f"{name}#{k}") for k in range(n)]
    return [ImageFile(path, None, name)]


def list_images(inputs: Union[PathLike, Iterable[PathLike]], *, recursive: bool = False) -> List[ImageFile]:
    """The images of files and folders, one :class:`ImageFile` per image (per frame of a multi-frame DICOM).

    Parameters
    ----------
    inputs : files and/or folders (one path or several). A file is taken whatever its ending (reading it says
        whether it is an image); a folder contributes its files ending in :data:`IMAGE_SUFFIXES` or
        :data:`DICOM_SUFFIXES` and its extensionless DICOM files, sorted by name, hidden files skipped.
    recursive : also search the folders' sub-folders.

    Returns
    -------
    list of :class:`ImageFile` in input order, each file once. Names are the file name for a file given
    directly and the path below the folder (``sub/a.png``) for a file found in one; when two images would share
    a name, both are named by their full path instead.

    Raises
    ------
    DataError
        naming the path when an input does not exist, or a folder holds no image file.
    """
    return [f for group in list_grouped(inputs, recursive=recursive) for f in group]


def list_grouped(inputs: Union[PathLike, Iterable[PathLike]], *, recursive: bool = False) -> List[List[ImageFile]]:
    """:func:`list_images`, one list per input (empty for a file already listed by an earlier input)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: List[List[Tuple[Path, str]]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = _folder_images(path, recursive)
            if not files:
                raise DataError(f"{path}: no images found in the folder (looked for "
                                f"{', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)} and extensionless DICOM files"
                                f"{', in sub-folders too' if recursive else ''})")
            found.append(files)
        elif path.is_file():
            found.append([(path, path.name)])
        else:
            raise DataError(f"{path}: no such file or folder")
    unique: List[List[Tuple[Path, str]]] = found
    if len(found) > 1:  # one input cannot list a file twice; several may
        seen: set = set()
        unique = []
        for group in found:
            kept = []
            for path, name in group:
                key = os.path.realpath(path)
                if key not in seen:
                    seen.add(key)
                    kept.append((path, name))
            unique.append(kept)
    counts: dict = {}
    for group in unique:
        for _, name in group:
            counts[name] = counts.get(name, 0) + 1
    return [[f for path, name in group for f in _expand(path, str(path) if counts[name] > 1 else name)]
            for group in unique]


def frame_label(image: ImageFile) -> str:
    """``"<file>"`` or ``"<file>#<frame>"``: where an image came from, for messages."""
    return f"{image.path}#{image.frame}" if image.frame is not None else str(image.path)

