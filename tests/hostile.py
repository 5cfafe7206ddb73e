"""A seeded corpus of hostile inputs for the reading side, generated from pydicom's real test files.

``build_corpus(root, seed)`` writes every case under ``root`` and returns a list of :class:`Case`:
the file (or folder) to open, its category, and what a correct front end must do with it:

- ``"error"``: refuse -- a one-line ``medviewer: error: ...`` (exit 1) from ``info`` and ``render``, an
  ``error`` entry in ``infer``'s ``results.json``; ``needle`` (when set) must appear in the message;
- ``"ok"``: read and render a real image (exit 0); ``note`` (when set) must be printed by ``render``
  (a fallback the user must know about);
- ``"either"``: random damage (bit flips) -- an error or an image, but never a traceback or a hang.

Categories: truncation, bit flips, semantic lies in the header (Bits Allocated 0, RGB with Samples per
Pixel 1, rescale overflow, unpaired windows, LUT descriptors that disagree with their data, palette
descriptors with 0 or 7 bits, unknown transfer syntax...), broken encapsulation (a JPEG 2000 stream
labelled JPEG baseline, a JPEG Lossless frame cut to its top third, fragments past the end of the file),
blank images, raster bombs (PNG/JPEG headers declaring huge sizes), DICOM declaring huge sizes, and
special files (FIFO, symbolic link loop, a link to ``/dev/zero``, a non-UTF-8 file name). DICOMDIR traps
live in their own folder (:func:`build_dicomdir_trap`). Nothing here is checked in: it is all written
from pydicom's test files at test time (a few MB, well under a second).

Run it by hand: ``python tests/hostile.py OUTDIR`` lists the cases it wrote.
"""

from __future__ import annotations

import copy
import os
import random
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.sequence import Sequence

__all__ = ["Case", "build_corpus", "build_dicomdir_trap", "SOURCES"]

#: the real files the corpus is made from (all in pydicom's own test data)
SOURCES = {
    "ct": "CT_small.dcm",  # 16-bit signed MONOCHROME2, rescale -1024
    "mr": "MR_small.dcm",
    "rgb": "SC_rgb.dcm",
    "palette": "OBXXXX1A.dcm",
    "voi_lut": "vlut_04.dcm",
    "modality_lut": "mlut_18.dcm",
    "j2k": "JPEG2000.dcm",
    "jpeg_ll": "JPEG-LL.dcm",
    "rle": "MR_small_RLE.dcm",
}


@dataclass(frozen=True)
class Case:
    """One hostile input and what a correct front end does with it (see the module docstring)."""

    name: str
    category: str
    path: Path
    expect: str  # "error" | "ok" | "either"
    needle: str = ""  # in the error message (expect="error") or in a note (expect="ok")
    special: bool = False  # a FIFO, device link, loop: not a regular file
    stage: str = "header"  # "header": `info` refuses it too; "pixels": only decoding shows the problem


def _src(key: str) -> Path:
    path = get_testdata_file(SOURCES[key], download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {SOURCES[key]} not available offline")
    return Path(path)


def _load(key: str) -> Dataset:
    return pydicom.dcmread(_src(key), force=True)


def _save(ds: Dataset, path: Path) -> Path:
    """Write `ds` under a SOP Instance UID of its own (derived from the file name: deterministic), so a
    folder scan does not fold the case into its source file as a duplicate."""
    uid = pydicom.uid.generate_uid(entropy_srcs=[path.name])
    ds.SOPInstanceUID = uid
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(path, enforce_file_format=False)
    return path


def _png(width: int, height: int, color_type: int = 0, bits: int = 8, body: bytes | None = None) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bits, color_type, 0, 0, 0)
    idat = zlib.compress(body if body is not None else b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 251).astype(np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    pos = 2
    while pos < len(data):  # patch the SOF0 size fields
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker == 0xC0:
            struct.pack_into(">HH", data, pos + 5, height, width)
            break
        pos += 2 + length
    return bytes(data)


def _reencapsulate(ds: Dataset, frames: list[bytes]) -> None:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"


def _first_frame(ds: Dataset) -> bytes:
    return b"".join(list(generate_fragments(ds.PixelData))[1:])


def build_corpus(root: Path, seed: int = 14) -> list[Case]:
    """Write the hostile corpus into `root` (created); returns its cases (deterministic for a seed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cases: list[Case] = []

    def add(name: str, category: str, expect: str, make: Callable[[Path], object], needle: str = "",
            special: bool = False, suffix: str = ".dcm", stage: str = "header") -> None:
        path = root / f"{category}__{name}{suffix}"
        if path.is_symlink() or path.exists():
            path.unlink()
        make(path)
        cases.append(Case(name, category, path, expect, needle, special, stage))

    def header(name: str, expect: str, needle: str, key: str, edit: Callable[[Dataset], None],
               stage: str = "header") -> None:
        def make(path: Path) -> None:
            ds = _load(key)
            edit(ds)
            _save(ds, path)
        add(name, "lie", expect, make, needle, stage=stage)

    # ---------------------------------------------------------------- controls: real files, must work
    for key in ("ct", "rgb", "palette", "j2k", "jpeg_ll", "rle"):
        add(f"control_{key}", "control", "ok", lambda p, k=key: p.write_bytes(_src(k).read_bytes()))

    # ---------------------------------------------------------------- truncation
    ct_bytes = _src("ct").read_bytes()
    for frac in (0.98, 0.7, 0.4):
        add(f"ct_cut_{int(frac * 100)}", "truncation", "error",
            lambda p, f=frac: p.write_bytes(ct_bytes[: int(len(ct_bytes) * f)]), "truncated")
    add("ct_cut_header", "truncation", "error", lambda p: p.write_bytes(ct_bytes[:300]))
    # the last byte cut: CT_small and MR_small_RLE end with Data Set Trailing Padding (FFFC,FFFC) after the
    # (native / encapsulated) pixels, so only the element after them is short -- still an incomplete file
    add("ct_cut_last_byte", "truncation", "error", lambda p: p.write_bytes(ct_bytes[:-1]), "truncated")
    add("rle_cut_last_byte", "truncation", "error",
        lambda p: p.write_bytes(_src("rle").read_bytes()[:-1]), "truncated")

    def ct_pixels_one_byte_short(path: Path) -> None:  # no padding: the Pixel Data itself is one byte short
        ds = _load("ct")
        del ds[0xFFFCFFFC]
        path.write_bytes(_save(ds, path).read_bytes()[:-1])
    add("ct_pixels_one_byte_short", "truncation", "error", ct_pixels_one_byte_short, "truncated")
    add("empty", "truncation", "error", lambda p: p.write_bytes(b""), "empty")
    for key in ("j2k", "jpeg_ll", "rle"):
        data = _src(key).read_bytes()
        add(f"{key}_cut_97", "truncation", "error", lambda p, d=data: p.write_bytes(d[: int(len(d) * 0.97)]),
            "truncated")

    def jpeg_top_third(path: Path) -> None:  # encapsulation intact, the stream cut: decoders fill black
        ds = _load("jpeg_ll")
        stream = _first_frame(ds)
        _reencapsulate(ds, [stream[: len(stream) // 3]])
        _save(ds, path)
    add("jpeg_ll_top_third", "truncation", "error", jpeg_top_third, "end-of-image")

    def j2k_half(path: Path) -> None:
        ds = _load("j2k")
        stream = _first_frame(ds)
        _reencapsulate(ds, [stream[: len(stream) // 2]])
        _save(ds, path)
    add("j2k_half_stream", "truncation", "error", j2k_half, "end-of-image")

    # ---------------------------------------------------------------- bit flips (random damage)
    for k in range(12):
        data = bytearray(ct_bytes)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(128, min(len(data), 1400))  # the header, where flips change meaning
            data[pos] ^= 1 << rng.randrange(8)
        add(f"ct_flip_{k:02d}", "bitflip", "either", lambda p, d=bytes(data): p.write_bytes(d))
    j2k_bytes = _src("j2k").read_bytes()
    for k in range(4):
        data = bytearray(j2k_bytes)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(128, len(data))
            data[pos] ^= 1 << rng.randrange(8)
        add(f"j2k_flip_{k:02d}", "bitflip", "either", lambda p, d=bytes(data): p.write_bytes(d))

    # ---------------------------------------------------------------- semantic lies in the header
    header("bits_allocated_0", "error", "Bits Allocated", "ct", lambda ds: setattr(ds, "BitsAllocated", 0))
    header("bits_allocated_12", "error", "Bits Allocated", "ct", lambda ds: setattr(ds, "BitsAllocated", 12))
    header("bits_stored_0", "error", "Bits Stored", "ct", lambda ds: setattr(ds, "BitsStored", 0))
    header("bits_stored_over", "error", "Bits Stored", "ct", lambda ds: setattr(ds, "BitsStored", 24))
    header("rgb_spp_1", "error", "Samples per Pixel", "rgb", lambda ds: setattr(ds, "SamplesPerPixel", 1))
    header("mono_spp_3", "error", "Samples per Pixel", "ct", lambda ds: setattr(ds, "SamplesPerPixel", 3))
    header("spp_0", "error", "Samples per Pixel", "ct", lambda ds: setattr(ds, "SamplesPerPixel", 0))
    header("frames_0", "error", "Number of Frames", "ct", lambda ds: setattr(ds, "NumberOfFrames", 0))
    header("pixel_representation_2", "error", "Pixel Representation", "ct",
           lambda ds: setattr(ds, "PixelRepresentation", 2))
    header("photometric_unknown", "error", "Photometric", "ct",
           lambda ds: setattr(ds, "PhotometricInterpretation", "HSV"))
    header("rows_0", "error", "Rows", "ct", lambda ds: setattr(ds, "Rows", 0))
    header("rescale_slope_1e308", "error", "overflow", "ct", lambda ds: setattr(ds, "RescaleSlope", "1e308"))
    header("rescale_intercept_1e308", "error", "overflow", "ct",
           lambda ds: setattr(ds, "RescaleIntercept", "1e308"))
    header("rescale_slope_inf", "error", "Rescale Slope", "ct", lambda ds: setattr(ds, "RescaleSlope", "inf"))
    header("rescale_slope_nan", "error", "Rescale Slope", "ct", lambda ds: setattr(ds, "RescaleSlope", "nan"))
    header("rescale_slope_0", "error", "Rescale Slope", "ct", lambda ds: setattr(ds, "RescaleSlope", "0"))

    def three_centres(ds: Dataset) -> None:
        ds.WindowCenter = ["40", "400", "-600"]
        ds.WindowWidth = "400"
    header("three_centres_one_width", "ok", "must pair up", "ct", three_centres)

    def width_zero(ds: Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = "40", "0"
    header("window_width_0", "ok", "window 1 of the file ignored", "ct", width_zero)

    def voi_lut_short(ds: Dataset) -> None:
        item = ds.VOILUTSequence[0]
        item.LUTDescriptor = [int(item.LUTDescriptor[0] or 65536) * 4, item.LUTDescriptor[1], item.LUTDescriptor[2]]
    header("voi_lut_data_short", "ok", "VOI LUT Sequence item 1 ignored", "voi_lut", voi_lut_short)

    def voi_lut_bits(ds: Dataset, bits: int) -> None:
        item = ds.VOILUTSequence[0]
        item.LUTDescriptor = [item.LUTDescriptor[0], item.LUTDescriptor[1], bits]
    header("voi_lut_bits_0", "ok", "bits per entry", "voi_lut", lambda ds: voi_lut_bits(ds, 0))
    header("voi_lut_bits_7", "ok", "bits per entry", "voi_lut", lambda ds: voi_lut_bits(ds, 7))

    def voi_lut_two_values(ds: Dataset) -> None:
        ds.VOILUTSequence[0].LUTDescriptor = [4096, 0]
    header("voi_lut_descriptor_2_values", "ok", "3 values", "voi_lut", voi_lut_two_values)

    def voi_lut_then_window(ds: Dataset) -> None:  # a bad LUT item, a good second one
        bad = Dataset()
        bad.LUTDescriptor = [10, 0, 16]
        bad.LUTData = struct.pack("<3H", 0, 1, 2)
        bad["LUTData"].VR = "OW"
        ds.VOILUTSequence = Sequence([bad, *ds.VOILUTSequence])
    header("voi_lut_bad_then_good", "ok", "VOI LUT Sequence item 1 ignored", "voi_lut", voi_lut_then_window)

    def voi_lut_constant(ds: Dataset) -> None:
        item = ds.VOILUTSequence[0]
        n = int(item.LUTDescriptor[0] or 65536)
        item.LUTData = struct.pack(f"<{n}H", *([4095] * n))
        item["LUTData"].VR = "OW"
    header("voi_lut_constant", "ok", "blank image", "voi_lut", voi_lut_constant)

    def modality_lut_short(ds: Dataset) -> None:
        item = ds.ModalityLUTSequence[0]
        item.LUTDescriptor = [int(item.LUTDescriptor[0] or 65536) * 4, item.LUTDescriptor[1], item.LUTDescriptor[2]]
    header("modality_lut_data_short", "error", "Modality LUT", "modality_lut", modality_lut_short, stage="pixels")

    def modality_lut_bits_7(ds: Dataset) -> None:
        item = ds.ModalityLUTSequence[0]
        item.LUTDescriptor = [item.LUTDescriptor[0], item.LUTDescriptor[1], 7]
    header("modality_lut_bits_7", "error", "Modality LUT", "modality_lut", modality_lut_bits_7, stage="pixels")

    def palette_bits(ds: Dataset, bits: int) -> None:
        for colour in ("Red", "Green", "Blue"):
            key = f"{colour}PaletteColorLookupTableDescriptor"
            d = list(ds[key].value)
            ds[key].value = [d[0], d[1], bits]
    header("palette_bits_0", "error", "bits per entry", "palette", lambda ds: palette_bits(ds, 0))
    header("palette_bits_7", "error", "bits per entry", "palette", lambda ds: palette_bits(ds, 7))
    header("palette_no_descriptor", "error", "Descriptor", "palette",
           lambda ds: delattr(ds, "RedPaletteColorLookupTableDescriptor"))

    def unknown_ts(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8"
    header("unknown_transfer_syntax", "error", "Transfer Syntax", "ct", unknown_ts)

    def huge(ds: Dataset) -> None:  # 65535 x 65535 x 3 x 1000 declared, a few KB present
        ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    header("huge_declared_size", "error", "limit", "ct", huge)

    def huge_frames(ds: Dataset) -> None:
        ds.Rows, ds.Columns, ds.NumberOfFrames = 4096, 4096, 100000
    header("huge_frame_count", "error", "limit", "ct", huge_frames)

    def nested_sequences(path: Path, depth: int = 20_000) -> None:  # SQ in item in SQ ..., undefined lengths
        ds = _load("ct")
        _save(ds, path)
        data = path.read_bytes()
        at = data.find(b"\xe0\x7f\x10\x00")  # Pixel Data: the nest goes right before it
        sq = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        path.write_bytes(data[:at] + (sq + item) * depth + close * depth + data[at:])
    add("sequences_nested_20000_deep", "lie", "error", nested_sequences, "nested too deeply")

    # ---------------------------------------------------------------- broken encapsulation
    def j2k_as_baseline(path: Path) -> None:
        ds = _load("j2k")
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        _save(ds, path)
    add("j2k_labelled_jpeg_baseline", "encapsulation", "error", j2k_as_baseline, "JPEG 2000")

    def jpeg_as_j2k(path: Path) -> None:
        ds = _load("jpeg_ll")
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        _save(ds, path)
    add("jpeg_labelled_j2k", "encapsulation", "error", jpeg_as_j2k, "not a JPEG 2000")

    def j2k_rows_lie(path: Path) -> None:
        ds = _load("j2k")
        ds.Rows = int(ds.Rows) // 2
        _save(ds, path)
    add("j2k_rows_disagree", "encapsulation", "error", j2k_rows_lie, "SIZ")

    def no_delimiter(path: Path) -> None:
        data = _src("jpeg_ll").read_bytes()
        assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        path.write_bytes(data[:-8])
    add("jpeg_ll_no_sequence_delimiter", "encapsulation", "error", no_delimiter, "truncated")

    def fragment_past_end(path: Path) -> None:
        ds = _load("jpeg_ll")
        _save(ds, path)
        data = bytearray(path.read_bytes())
        at = data.rfind(b"\xfe\xff\x00\xe0")  # the last fragment's item header
        struct.pack_into("<I", data, at + 4, 0x7FFFFFF0)
        path.write_bytes(bytes(data))
    add("fragment_length_past_end", "encapsulation", "error", fragment_past_end, "truncated")

    def native_ts_encapsulated(path: Path) -> None:
        ds = _load("jpeg_ll")
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        _save(ds, path)
    add("native_ts_with_encapsulated_data", "encapsulation", "error", native_ts_encapsulated, "encapsulated")

    def rle_bad_header(path: Path) -> None:
        ds = _load("rle")
        frame = bytearray(_first_frame(ds))
        struct.pack_into("<I", frame, 0, 9)
        _reencapsulate(ds, [bytes(frame)])
        _save(ds, path)
    add("rle_segment_count", "encapsulation", "error", rle_bad_header, "RLE header")

    # ---------------------------------------------------------------- blank images
    def blank(path: Path, value: int) -> None:
        ds = _load("ct")
        arr = np.full((ds.Rows, ds.Columns), value, np.int16)
        ds.PixelData = arr.tobytes()
        for key in ("WindowCenter", "WindowWidth"):
            if key in ds:
                delattr(ds, key)
        _save(ds, path)
    add("blank_white", "blank", "error", lambda p: blank(p, 4000), "blank", stage="pixels")
    add("blank_zero", "blank", "error", lambda p: blank(p, 0), "blank", stage="pixels")

    # ---------------------------------------------------------------- raster bombs and broken rasters
    add("png_bomb_100k", "raster", "error", lambda p: p.write_bytes(_png(100_000, 100_000)), "limit", suffix=".png")
    add("png_bomb_rgb", "raster", "error", lambda p: p.write_bytes(_png(30_000, 30_000, color_type=2)), "limit",
        suffix=".png")
    add("jpeg_bomb_65k", "raster", "error", lambda p: p.write_bytes(_jpeg_with_size(65_000, 65_000)), "limit",
        suffix=".jpg")
    add("png_truncated", "raster", "error", lambda p: p.write_bytes(_png(64, 64)[:40]), suffix=".png")

    def cut_raster(path: Path, ext: str, fraction: float) -> None:  # a real image, its end cut off
        import cv2

        ok, buf = cv2.imencode(ext, (np.add.outer(np.arange(300), np.arange(200)) % 251).astype(np.uint8))
        assert ok
        path.write_bytes(buf.tobytes()[: int(buf.size * fraction)])
    add("png_cut_in_idat", "raster", "error", lambda p: cut_raster(p, ".png", 0.7), "truncated", suffix=".png")
    add("jpeg_cut_in_scan", "raster", "error", lambda p: cut_raster(p, ".jpg", 0.6), "truncated", suffix=".jpg")
    add("jpeg_cut_before_eoi", "raster", "error", lambda p: cut_raster(p, ".jpg", 0.999), "truncated",
        suffix=".jpg")
    add("png_no_ihdr", "raster", "error", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
        suffix=".png")
    add("jpeg_only_soi", "raster", "error", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF"), suffix=".jpg")

    def gradient_png(path: Path) -> None:
        import cv2

        cv2.imwrite(str(path), (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8))
    add("png_ok", "raster", "ok", gradient_png, suffix=".png")

    # ---------------------------------------------------------------- special files and odd names
    def fifo(path: Path) -> None:
        os.mkfifo(path)
    add("fifo", "special", "error", fifo, "FIFO", special=True)

    def loop(path: Path) -> None:
        os.symlink(path.name, path)  # a link to itself
    add("symlink_loop", "special", "error", loop, "symbolic link loop", special=True)

    def dev_zero(path: Path) -> None:
        os.symlink("/dev/zero", path)
    add("link_to_dev_zero", "special", "error", dev_zero, "character device", special=True)

    name = os.fsdecode(b"special__non_utf8_\xff\xfe.dcm")
    (root / name).unlink(missing_ok=True)
    (root / name).write_bytes(ct_bytes)
    cases.append(Case("non_utf8_name", "special", root / name, "ok"))
    return cases


def build_dicomdir_trap(root: Path) -> tuple[Path, Path, list[str]]:
    """A study folder whose DICOMDIR references one good image, then ``../outside.dcm``, ``/etc/passwd``,
    a 300-component path, a missing file and a symbolic link that points outside the folder. Returns (the study folder, the outside image, the reasons'
    needles the scan must report)."""
    from pydicom.fileset import FileSet

    root = Path(root)
    study = root / "study"
    study.mkdir(parents=True, exist_ok=True)
    outside = root / "outside.dcm"
    outside.write_bytes(_src("mr").read_bytes())  # a valid image that must NOT be loaded
    fs = FileSet()
    fs.add(_load("ct"))
    fs.write(study)
    ds = pydicom.dcmread(study / "DICOMDIR")
    image_records = [r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    template = image_records[0]
    os.symlink(os.path.join("..", "outside.dcm"), study / "LINKED")  # inside by name, outside in fact
    for ref in (["..", "outside.dcm"], "/etc/passwd", ["A" * 200] * 300, ["NOPE", "MISSING"], ["LINKED"]):
        rec = copy.deepcopy(template)
        rec.ReferencedFileID = ref
        ds.DirectoryRecordSequence.append(rec)
    ds.save_as(study / "DICOMDIR", enforce_file_format=False)
    return study, outside, ["leaves the DICOMDIR's folder", "components", "missing", "resolves outside"]


if __name__ == "__main__":  # pragma: no cover - manual use
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    for case in build_corpus(out):
        print(f"{case.expect:6s} {case.category:13s} {case.name}")
