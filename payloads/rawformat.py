"""Reader and writer for the np04 raw HDF5 format, version 1.

The format is specified in ``shared/formats/np04-raw-hdf5.md``; this module follows that page
and nothing else. In short::

    /                      attrs: format, format_version, run, subrun, detector, tick_us,
                                  n_ticks, drift_speed_mm_per_us, created
    /geometry/{channel,apa,tpc,plane,wire,fiber}[n_channels]   (+ pds_channel, pds_apa)
    /events/{event:06d}    attrs: timestamp_ns, trigger
        adc   uint16 (n_channels, n_ticks), chunked by fiber (128 rows x n_ticks)
        pds   uint16 (n_pds_channels, n_pds_samples), optional
        beam  compound (tof_ns, ckov0, ckov1, momentum_gev, x_mm, y_mm), optional
    /truth                 simulated files only; never read by payloads

:func:`open_raw` validates a file on open and raises :class:`RawFormatError` for every fault,
with a message that names the file and the fault. :class:`RawWriter` writes a file under a
temporary name and renames it into place on close, so a watcher never sees half a file.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import h5py
import numpy as np

__all__ = [
    "ADC_MAX",
    "BEAM_DTYPE",
    "CHANNELS_PER_FIBER",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Geometry",
    "RawFile",
    "RawFormatError",
    "RawWriter",
    "open_raw",
    "parse_filename",
    "raw_filename",
    "read_truth",
]

T = TypeVar("T")

FORMAT_NAME = "np04-raw-hdf5"
FORMAT_VERSION = 1
DETECTOR = "protodune-sp"
ADC_MAX = 4095
"""Largest value of the 12-bit TPC ADC."""

CHANNELS_PER_FIBER = 128
FIBERS_PER_APA = 20
CHANNELS_PER_APA = 2560
PLANE_WIRES = (800, 800, 960)
"""Wires per APA of the U, V and X planes."""
FIBER_WIRES = (40, 40, 48)
"""Wires per fiber of the U, V and X planes."""
APA_TPC = (1, 2, 5, 6, 9, 10)
"""Active TPC number read by APA 0..5."""
PDS_PER_APA = 10

BEAM_DTYPE = np.dtype(
    [
        ("tof_ns", "<f4"),
        ("ckov0", "u1"),
        ("ckov1", "u1"),
        ("momentum_gev", "<f4"),
        ("x_mm", "<f4"),
        ("y_mm", "<f4"),
    ]
)
"""One beam particle: time of flight [ns], Cherenkov bits, momentum [GeV/c], position [mm]."""

GEOMETRY_DTYPES: dict[str, np.dtype] = {
    "channel": np.dtype("int32"),
    "apa": np.dtype("int16"),
    "tpc": np.dtype("int16"),
    "plane": np.dtype("int8"),
    "wire": np.dtype("int32"),
    "fiber": np.dtype("int16"),
}
PDS_DTYPES: dict[str, np.dtype] = {"pds_channel": np.dtype("int32"), "pds_apa": np.dtype("int16")}

_FILENAME = re.compile(r"^np04_raw_run(\d{6,})_(\d{4,})_dl(\d+)\.h5$")
_EVENT_NAME = re.compile(r"^\d{6,}$")


class RawFormatError(ValueError):
    """A file is not valid np04 raw HDF5 version 1.

    Args:
        path: the file, as given to the reader.
        fault: one sentence saying what is wrong and where (attribute, event, dataset).
    """

    def __init__(self, path: str | os.PathLike[str], fault: str) -> None:
        super().__init__(os.fspath(path), fault)
        self.path = os.fspath(path)
        self.fault = fault

    def __str__(self) -> str:
        return f"{self.path}: {self.fault}"


# --------------------------------------------------------------------------------------------
# File names


def parse_filename(name: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """Parse ``np04_raw_run{run:06d}_{subrun:04d}_dl{stream}.h5``.

    Args:
        name: a file name or path; only the last component is parsed.

    Returns:
        ``(run, subrun, stream)``, or ``None`` when the name does not follow the rule.
    """
    match = _FILENAME.match(Path(name).name)
    if match is None:
        return None
    run, subrun, stream = (int(g) for g in match.groups())
    return run, subrun, stream


def raw_filename(run: int, subrun: int, stream: int = 1) -> str:
    """Return the file name the format prescribes, e.g. ``np04_raw_run004649_0001_dl1.h5``."""
    if run < 0 or subrun < 0 or stream < 0:
        raise ValueError(f"run, subrun and stream must be >= 0, got {run}, {subrun}, {stream}")
    return f"np04_raw_run{run:06d}_{subrun:04d}_dl{stream}.h5"


# --------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True, eq=False)
class Geometry:
    """The TPC channel map of a file: one entry per row of the ``adc`` array.

    All arrays are 1-D of length ``n_channels`` (PDS arrays: ``n_pds_channels``).

    Attributes:
        channel: int32, offline channel number (``apa * 2560 + index in APA``).
        apa: int16, APA index 0..5.
        tpc: int16, active TPC read by the APA (APA 0..5 -> TPC 1, 2, 5, 6, 9, 10).
        plane: int8, 0 = U, 1 = V (induction), 2 = X (collection).
        wire: int32, wire index within its plane and APA.
        fiber: int16, readout fiber index (``apa * 20 + fiber in APA`` in the layouts built
            here; any integer in files from other writers).
        pds_channel: int32 photon-detector channel numbers, or None.
        pds_apa: int16 APA of each photon-detector channel, or None.
    """

    channel: np.ndarray
    apa: np.ndarray
    tpc: np.ndarray
    plane: np.ndarray
    wire: np.ndarray
    fiber: np.ndarray
    pds_channel: np.ndarray | None = None
    pds_apa: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = None
        for name, dtype in GEOMETRY_DTYPES.items():
            arr = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            if arr.ndim != 1:
                raise ValueError(f"geometry {name} must be 1-D, got shape {arr.shape}")
            if n is None:
                n = arr.size
            elif arr.size != n:
                raise ValueError(f"geometry {name} has {arr.size} entries, channel has {n}")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if (self.pds_channel is None) != (self.pds_apa is None):
            raise ValueError("geometry needs both pds_channel and pds_apa, or neither")
        if self.pds_channel is not None:
            for name, dtype in PDS_DTYPES.items():
                arr = np.ascontiguousarray(getattr(self, name), dtype=dtype)
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)
            if self.pds_channel.shape != self.pds_apa.shape or self.pds_channel.ndim != 1:
                raise ValueError("geometry pds_channel and pds_apa must be 1-D of equal length")

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def full(cls, n_apas: int = 6, *, pds_per_apa: int = PDS_PER_APA) -> Geometry:
        """The protoDUNE-SP layout: ``n_apas`` APAs of 2560 channels (20 fibers of 128)."""
        return cls.reduced(n_apas=n_apas, fibers_per_apa=FIBERS_PER_APA, pds_per_apa=pds_per_apa)

    @classmethod
    def reduced(
        cls, n_apas: int = 1, fibers_per_apa: int = 4, *, pds_per_apa: int = PDS_PER_APA
    ) -> Geometry:
        """A protoDUNE-SP layout keeping the first ``fibers_per_apa`` whole fibers of each APA.

        Rows are ordered by APA, fiber, plane and wire, so each fiber is 128 consecutive rows
        (40 U, 40 V, 48 X wires) and one ``adc`` chunk. Channel numbers, wire indices and fiber
        indices are those of the full detector.

        Args:
            n_apas: APAs 0..n_apas-1 (1 to 6).
            fibers_per_apa: fibers kept per APA (1 to 20).
            pds_per_apa: photon-detector channels per APA (0 for none).
        """
        if not 1 <= n_apas <= len(APA_TPC):
            raise ValueError(f"n_apas must be 1..{len(APA_TPC)}, got {n_apas}")
        if not 1 <= fibers_per_apa <= FIBERS_PER_APA:
            raise ValueError(f"fibers_per_apa must be 1..{FIBERS_PER_APA}, got {fibers_per_apa}")
        plane_offset = np.cumsum((0, *PLANE_WIRES[:-1]))
        # One fiber's 128 rows: plane and wire-within-fiber.
        f_plane = np.repeat(np.arange(3), FIBER_WIRES)
        f_wire = np.concatenate([np.arange(n) for n in FIBER_WIRES])
        apa = np.repeat(np.arange(n_apas), fibers_per_apa * CHANNELS_PER_FIBER)
        fib_in_apa = np.tile(np.repeat(np.arange(fibers_per_apa), CHANNELS_PER_FIBER), n_apas)
        plane = np.tile(f_plane, n_apas * fibers_per_apa)
        wire = (
            np.tile(f_wire, n_apas * fibers_per_apa) + fib_in_apa * np.asarray(FIBER_WIRES)[plane]
        )
        channel = apa * CHANNELS_PER_APA + plane_offset[plane] + wire
        pds = np.arange(n_apas * pds_per_apa)
        return cls(
            channel=channel,
            apa=apa,
            tpc=np.asarray(APA_TPC)[apa],
            plane=plane,
            wire=wire,
            fiber=apa * FIBERS_PER_APA + fib_in_apa,
            pds_channel=pds if pds_per_apa else None,
            pds_apa=pds // pds_per_apa if pds_per_apa else None,
        )

    # -- queries ------------------------------------------------------------------------------

    @property
    def n_channels(self) -> int:
        """Number of TPC channels (rows of ``adc``)."""
        return int(self.channel.size)

    @property
    def n_pds_channels(self) -> int:
        """Number of photon-detector channels (0 if none)."""
        return 0 if self.pds_channel is None else int(self.pds_channel.size)

    @cached_property
    def fibers(self) -> np.ndarray:
        """Sorted unique fiber indices, int16."""
        return np.unique(self.fiber)

    @cached_property
    def apas(self) -> np.ndarray:
        """Sorted unique APA indices, int16."""
        return np.unique(self.apa)

    @cached_property
    def tpcs(self) -> np.ndarray:
        """Sorted unique TPC numbers, int16."""
        return np.unique(self.tpc)

    @cached_property
    def _fiber_rows(self) -> dict[int, slice | np.ndarray]:
        rows: dict[int, slice | np.ndarray] = {}
        order = np.argsort(self.fiber, kind="stable")
        bounds = np.flatnonzero(np.diff(self.fiber[order])) + 1
        for idx in np.split(order, bounds):
            idx = np.sort(idx)
            contiguous = idx[-1] - idx[0] + 1 == idx.size
            rows[int(self.fiber[idx[0]])] = (
                slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
            )
        return rows

    def rows_of_fiber(self, fiber: int) -> slice | np.ndarray:
        """Rows of ``adc`` read by ``fiber``: a slice when consecutive, else sorted indices."""
        try:
            return self._fiber_rows[int(fiber)]
        except KeyError:
            raise KeyError(f"fiber {fiber} is not in this geometry") from None

    def rows_where(self, *, apa: int | None = None, plane: int | None = None) -> np.ndarray:
        """Sorted row indices of the channels on ``apa`` and/or ``plane`` (None: any)."""
        mask = np.ones(self.n_channels, dtype=bool)
        if apa is not None:
            mask &= self.apa == apa
        if plane is not None:
            mask &= self.plane == plane
        return np.flatnonzero(mask)


# --------------------------------------------------------------------------------------------
# Writer


class RawWriter:
    """Write a file in np04 raw HDF5 version 1.

    The file is written as ``.{name}.{random}.part`` in the target folder and renamed to
    ``path`` by :meth:`close` (or the end of a ``with`` block); after an exception inside the
    block the partial file is removed.

    Args:
        path: the final file name (normally :func:`raw_filename`).
        run, subrun: run and subrun numbers.
        geometry: channel map; its row order is the row order of every ``adc``.
        n_ticks: samples per channel per event.
        tick_us: sampling period [us].
        drift_speed_mm_per_us: electron drift speed [mm/us].
        compression: None, ``"lzf"`` or ``"gzip"`` (level 1) for ``adc`` and ``pds``.
        detector: the ``detector`` attribute.

    Example::

        with RawWriter(path, run=1, subrun=1, geometry=Geometry.reduced(), n_ticks=2000) as w:
            w.add_event(adc, timestamp_ns=t, trigger=0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run: int,
        subrun: int,
        geometry: Geometry,
        n_ticks: int,
        tick_us: float = 0.5,
        drift_speed_mm_per_us: float = 1.6,
        compression: str | None = None,
        detector: str = DETECTOR,
    ) -> None:
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression must be None, 'lzf' or 'gzip', got {compression!r}")
        if n_ticks <= 0:
            raise ValueError(f"n_ticks must be > 0, got {n_ticks}")
        self.path = Path(path)
        self.geometry = geometry
        self.n_ticks = int(n_ticks)
        self.n_events = 0
        self._filters: dict[str, Any] = {"fletcher32": True}
        if compression == "lzf":
            self._filters["compression"] = "lzf"
        elif compression == "gzip":
            self._filters.update(compression="gzip", compression_opts=1)
        self._part = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.part")
        self._h5: h5py.File | None = h5py.File(self._part, "w")
        attrs = self._h5.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = np.int64(FORMAT_VERSION)
        attrs["run"] = np.int64(run)
        attrs["subrun"] = np.int64(subrun)
        attrs["detector"] = detector
        attrs["tick_us"] = np.float64(tick_us)
        attrs["n_ticks"] = np.int64(n_ticks)
        attrs["drift_speed_mm_per_us"] = np.float64(drift_speed_mm_per_us)
        attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        geo = self._h5.create_group("geometry")
        for name in GEOMETRY_DTYPES:
            geo.create_dataset(name, data=getattr(geometry, name))
        if geometry.pds_channel is not None:
            for name in PDS_DTYPES:
                geo.create_dataset(name, data=getattr(geometry, name))
        self._events = self._h5.create_group("events")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def _file(self) -> h5py.File:
        if self._h5 is None:
            raise RuntimeError(f"{self.path}: the writer is closed")
        return self._h5

    def add_event(
        self,
        adc: np.ndarray,
        *,
        timestamp_ns: int,
        trigger: int,
        pds: np.ndarray | None = None,
        beam: np.ndarray | None = None,
    ) -> int:
        """Append one event and return its number.

        Args:
            adc: uint16 array (n_channels, n_ticks), values 0..4095, geometry row order.
            timestamp_ns: trigger time, Unix nanoseconds.
            trigger: 0 = cosmic/random, 1 = beam.
            pds: optional uint16 array (n_pds_channels, n_pds_samples).
            beam: optional structured array with the fields of :data:`BEAM_DTYPE`.
        """
        expected = (self.geometry.n_channels, self.n_ticks)
        if not isinstance(adc, np.ndarray) or adc.dtype != np.uint16:
            raise TypeError(f"adc must be a uint16 numpy array, got {getattr(adc, 'dtype', adc)}")
        if adc.shape != expected:
            raise ValueError(
                f"adc has shape {adc.shape}, expected (n_channels, n_ticks) {expected}"
            )
        if adc.size and int(adc.max()) > ADC_MAX:
            raise ValueError(f"adc holds {int(adc.max())}, above the 12-bit maximum {ADC_MAX}")
        event = self.n_events
        group = self._file["events"].create_group(f"{event:06d}")
        group.attrs["timestamp_ns"] = np.int64(timestamp_ns)
        group.attrs["trigger"] = np.int64(trigger)
        chunk_rows = min(CHANNELS_PER_FIBER, expected[0]) or 1
        group.create_dataset(
            "adc", data=adc, chunks=(chunk_rows, max(self.n_ticks, 1)), **self._filters
        )
        if pds is not None:
            pds = np.asarray(pds)
            if pds.dtype != np.uint16 or pds.ndim != 2:
                raise ValueError(f"pds must be a 2-D uint16 array, got {pds.dtype} {pds.shape}")
            if pds.shape[0] != self.geometry.n_pds_channels:
                raise ValueError(
                    f"pds has {pds.shape[0]} rows, the geometry has "
                    f"{self.geometry.n_pds_channels} pds channels"
                )
            group.create_dataset("pds", data=pds, **self._filters)
        if beam is not None:
            group.create_dataset("beam", data=_as_beam_array(np.asarray(beam)))
        self.n_events += 1
        return event

    def write_truth(self, mapping: Mapping[str, Any]) -> None:
        """Write what a simulator injected under ``/truth`` (read back by :func:`read_truth`).

        Nested mappings become groups; everything else becomes a dataset (strings and lists
        of strings as UTF-8 strings).
        """
        if "truth" in self._file:
            del self._file["truth"]
        _write_mapping(self._file.create_group("truth"), mapping)

    def close(self) -> Path:
        """Finish the file and rename it to ``path``; return ``path``."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            os.replace(self._part, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self._part.unlink(missing_ok=True)


def _as_beam_array(beam: np.ndarray) -> np.ndarray:
    names = beam.dtype.names or ()
    missing = [n for n in BEAM_DTYPE.names if n not in names]
    if missing:
        raise ValueError(f"beam array lacks fields {missing}; it needs {list(BEAM_DTYPE.names)}")
    out = np.zeros(beam.shape[0] if beam.ndim else 1, dtype=BEAM_DTYPE)
    for name in BEAM_DTYPE.names:
        out[name] = beam[name]
    return out


def _write_mapping(group: h5py.Group, mapping: Mapping[str, Any]) -> None:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            _write_mapping(group.create_group(str(key)), value)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "UO":
            group.create_dataset(
                str(key), data=arr.astype(object), dtype=h5py.string_dtype("utf-8")
            )
        else:
            group.create_dataset(str(key), data=arr)


# --------------------------------------------------------------------------------------------
# Reader


def open_raw(path: str | os.PathLike[str]) -> RawFile:
    """Open and validate a raw file; see :class:`RawFile`.

    Raises:
        FileNotFoundError: there is no such file.
        RawFormatError: the file is not valid np04 raw HDF5 version 1.
    """
    return RawFile(path)


class RawFile:
    """An open, validated np04 raw HDF5 file.

    Use as a context manager or call :meth:`close`. Events are addressed by their index
    ``i`` in :attr:`event_ids` (equal to the event number in files numbered from 0).
    Validation on open reads only metadata; :meth:`verify_readable` reads every byte.

    Raises:
        FileNotFoundError: there is no such file.
        RawFormatError: any fault of format (also for truncated or corrupt files).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._name = os.fspath(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self._name}: no such raw file")
        try:
            is_hdf5 = h5py.is_hdf5(self.path)
        except OSError as exc:
            raise self._error(f"cannot be read ({exc})") from exc
        if not is_hdf5:
            raise self._error("not an HDF5 file (no HDF5 signature)")
        try:
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=8 * 1024 * 1024)
        except OSError as exc:
            raise self._error(f"cannot be opened as HDF5, truncated or corrupt ({exc})") from exc
        try:
            self._validate()
        except RawFormatError:
            self._h5.close()
            raise
        except (OSError, KeyError, RuntimeError) as exc:  # h5py read faults on metadata
            self._h5.close()
            raise self._error(f"metadata cannot be read, truncated or corrupt ({exc})") from exc

    # -- context and lifecycle ----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file (idempotent)."""
        if self._h5.id.valid:
            self._h5.close()

    def __repr__(self) -> str:
        return (
            f"RawFile({self._name!r}, run={self.run}, subrun={self.subrun}, "
            f"events={self.n_events}, channels={self.geometry.n_channels}, ticks={self.n_ticks})"
        )

    def _error(self, fault: str) -> RawFormatError:
        return RawFormatError(self._name, fault)

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> None:
        attrs = self._h5.attrs
        fmt = _attr(attrs, "format")
        if fmt is None:
            raise self._error("root attribute 'format' is missing (not an np04 raw file?)")
        if not isinstance(fmt, str) or fmt != FORMAT_NAME:
            raise self._error(f"root attribute format is {fmt!r}, expected {FORMAT_NAME!r}")
        self._check_version(_attr(attrs, "format_version"))
        self.run = self._int_attr("run", minimum=0)
        self.subrun = self._int_attr("subrun", minimum=0)
        self.n_ticks = self._int_attr("n_ticks", minimum=1)
        self.tick_us = self._float_attr("tick_us")
        self.drift_speed_mm_per_us = self._float_attr("drift_speed_mm_per_us")
        self.detector = self._str_attr("detector")
        self.created = self._str_attr("created")
        parsed = parse_filename(self.path)
        if parsed is not None and parsed[:2] != (self.run, self.subrun):
            raise self._error(
                f"file name says run {parsed[0]} subrun {parsed[1]} but the attributes say "
                f"run {self.run} subrun {self.subrun}"
            )
        self.geometry = self._read_geometry()
        self.event_ids = self._validate_events()

    def _check_version(self, version: Any) -> None:
        if version is None:
            raise self._error("root attribute 'format_version' is missing")
        major: int | None = None
        if isinstance(version, int | np.integer) and not isinstance(version, bool):
            major = int(version)
        elif isinstance(version, str) and re.fullmatch(r"\d+(\.\d+)*", version):
            major = int(version.split(".")[0])
        if major is None:
            raise self._error(f"root attribute format_version is {version!r}, not an integer")
        if major != FORMAT_VERSION:
            raise self._error(
                f"format_version {version} is not supported "
                f"(this reader reads version {FORMAT_VERSION})"
            )

    def _require_attr(self, name: str) -> Any:
        value = _attr(self._h5.attrs, name)
        if value is None:
            raise self._error(f"root attribute {name!r} is missing")
        return value

    def _int_attr(self, name: str, *, minimum: int) -> int:
        value = self._require_attr(name)
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise self._error(f"root attribute {name} is {value!r}, not an integer")
        if value < minimum:
            raise self._error(f"root attribute {name} is {value}, must be >= {minimum}")
        return int(value)

    def _float_attr(self, name: str) -> float:
        value = self._require_attr(name)
        if not isinstance(value, int | float | np.integer | np.floating):
            raise self._error(f"root attribute {name} is {value!r}, not a number")
        if not np.isfinite(value) or value <= 0:
            raise self._error(f"root attribute {name} is {value}, must be a positive number")
        return float(value)

    def _str_attr(self, name: str) -> str:
        value = self._require_attr(name)
        if not isinstance(value, str):
            raise self._error(f"root attribute {name} is {value!r}, not a string")
        return value

    def _read_geometry(self) -> Geometry:
        geo = self._h5.get("geometry")
        if not isinstance(geo, h5py.Group):
            raise self._error("group /geometry is missing")
        arrays: dict[str, np.ndarray] = {}
        names = list(GEOMETRY_DTYPES)
        if "pds_channel" in geo or "pds_apa" in geo:
            names += list(PDS_DTYPES)
        for name in names:
            ds = geo.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise self._error(f"dataset /geometry/{name} is missing")
            if ds.ndim != 1 or ds.dtype.kind not in "iu":
                raise self._error(
                    f"dataset /geometry/{name} must be a 1-D integer array, "
                    f"got {ds.dtype} {ds.shape}"
                )
            arrays[name] = self._read_dataset(ds)
        lengths = {name: arrays[name].size for name in GEOMETRY_DTYPES}
        if len(set(lengths.values())) != 1:
            raise self._error(f"/geometry datasets differ in length: {lengths}")
        if lengths["channel"] == 0:
            raise self._error("/geometry has no channels")
        try:
            return Geometry(**arrays)
        except ValueError as exc:
            raise self._error(f"/geometry is inconsistent: {exc}") from exc

    def _validate_events(self) -> list[int]:
        events = self._h5.get("events")
        if not isinstance(events, h5py.Group):
            raise self._error("group /events is missing")
        expected = (self.geometry.n_channels, self.n_ticks)
        ids = []
        for name, group in events.items():
            where = f"/events/{name}"
            if not _EVENT_NAME.match(name) or not isinstance(group, h5py.Group):
                raise self._error(f"{where} is not an event group named by a 6-digit number")
            for attr in ("timestamp_ns", "trigger"):
                value = _attr(group.attrs, attr)
                if not isinstance(value, int | np.integer):
                    raise self._error(f"{where} attribute {attr} is {value!r}, not an integer")
            adc = group.get("adc")
            if not isinstance(adc, h5py.Dataset):
                raise self._error(f"dataset {where}/adc is missing")
            if adc.dtype != np.uint16:
                raise self._error(f"dataset {where}/adc has dtype {adc.dtype}, expected uint16")
            if adc.shape != expected:
                raise self._error(
                    f"dataset {where}/adc has shape {adc.shape}, expected "
                    f"(n_channels, n_ticks) = {expected}"
                )
            pds = group.get("pds")
            if pds is not None and (
                not isinstance(pds, h5py.Dataset) or pds.dtype != np.uint16 or pds.ndim != 2
            ):
                raise self._error(f"dataset {where}/pds must be a 2-D uint16 array")
            beam = group.get("beam")
            if beam is not None:
                fields = (beam.dtype.names or ()) if isinstance(beam, h5py.Dataset) else ()
                missing = [f for f in BEAM_DTYPE.names if f not in fields]
                if missing or beam.ndim != 1:
                    raise self._error(
                        f"dataset {where}/beam must be a 1-D compound array with fields "
                        f"{list(BEAM_DTYPE.names)}; missing {missing}"
                    )
            ids.append(int(name))
        return sorted(ids)

    # -- access -------------------------------------------------------------------------------

    @property
    def n_events(self) -> int:
        """Number of events in the file."""
        return len(self.event_ids)

    def _group(self, i: int) -> h5py.Group:
        if not -self.n_events <= i < self.n_events:
            raise IndexError(f"{self._name}: event index {i} out of range 0..{self.n_events - 1}")
        return self._h5["events"][f"{self.event_ids[i]:06d}"]

    def _read_dataset(
        self, ds: h5py.Dataset, sel: Any = (), out: np.ndarray | None = None
    ) -> np.ndarray:
        """``ds[sel]``, or read into ``out`` (and return it); a read error is a format fault."""
        try:
            if out is None:
                return ds[sel]
            ds.read_direct(out, source_sel=np.s_[sel])
            return out
        except (OSError, RuntimeError) as exc:
            raise self._error(f"dataset {ds.name} cannot be read, corrupt ({exc})") from exc

    def event_meta(self, i: int) -> tuple[int, int]:
        """Return ``(timestamp_ns, trigger)`` of event ``i``."""
        attrs = self._group(i).attrs
        return int(attrs["timestamp_ns"]), int(attrs["trigger"])

    def read_adc(self, i: int, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Return the raw ADC counts of event ``i``.

        Args:
            i: event index.
            rows: optional row selection (slice or increasing indices); default all rows.

        Returns:
            uint16 array (n_rows, n_ticks) in geometry row order.
        """
        ds = self._group(i)["adc"]
        return self._read_dataset(ds, () if rows is None else rows)

    def iter_fibers(
        self, i: int, *, reuse_buffer: bool = False, read_ahead: bool = False
    ) -> Iterator[tuple[int, slice | np.ndarray, np.ndarray]]:
        """Yield ``(fiber, rows, adc_block)`` for event ``i``, one fiber chunk at a time.

        ``adc_block`` is uint16 (n_rows_of_fiber, n_ticks) and ``rows`` selects those rows of
        the full ``adc`` array. Every row is yielded exactly once, in fiber order.

        Args:
            i: event index.
            reuse_buffer: read every block into the same buffer (no fresh 1.5 MB array, and
                its page faults, per fiber): a block is then valid only until the next one is
                asked for.
            read_ahead: with ``reuse_buffer``, read the next fiber (and verify its checksum,
                which HDF5 does without holding the GIL) in a thread while the caller works on
                this one, in two buffers used in turn. Worth it with a spare core only.
        """
        if not reuse_buffer:
            ds = self._group(i)["adc"]
            for fiber in self.geometry.fibers:
                rows = self.geometry.rows_of_fiber(int(fiber))
                yield int(fiber), rows, self._read_dataset(ds, rows)
            return
        for fiber, rows, block, _ in self.iter_fibers_prepared(i, None, read_ahead=read_ahead):
            yield fiber, rows, block

    def iter_fibers_prepared(
        self, i: int, prepare: Callable[[np.ndarray], T] | None, *, read_ahead: bool = False
    ) -> Iterator[tuple[int, slice | np.ndarray, np.ndarray, T | None]]:
        """Yield ``(fiber, rows, adc_block, prepare(adc_block))`` for event ``i``, as
        :meth:`iter_fibers` with ``reuse_buffer`` (a block is valid until the next is asked
        for).

        With ``read_ahead``, ``prepare`` runs in the reading thread right after the read, so a
        payload's per-fiber first step (pedestals, say) takes the spare core too. ``prepare``
        must not keep the block, and it should release the GIL for most of its work (numpy
        does) to gain anything.
        """
        ds = self._group(i)["adc"]
        fibers = [(int(f), self.geometry.rows_of_fiber(int(f))) for f in self.geometry.fibers]
        if not all(isinstance(rows, slice) for _, rows in fibers):
            for fiber, rows in fibers:  # a geometry with scattered rows: fresh arrays
                block = self._read_dataset(ds, rows)
                yield fiber, rows, block, None if prepare is None else prepare(block)
            return
        n_max = max(rows.stop - rows.start for _, rows in fibers)
        buffers = [np.empty((n_max, ds.shape[1]), dtype=ds.dtype) for _ in range(1 + read_ahead)]

        def read(k: int) -> tuple[np.ndarray, T | None]:
            rows = fibers[k][1]
            out = buffers[k % len(buffers)][: rows.stop - rows.start]
            block = self._read_dataset(ds, rows, out)
            return block, None if prepare is None else prepare(block)

        if not read_ahead:
            for k, (fiber, rows) in enumerate(fibers):
                yield fiber, rows, *read(k)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="p3s-read-ahead") as pool:
            pending = pool.submit(read, 0)
            for k, (fiber, rows) in enumerate(fibers):
                block, prepared = pending.result()
                if k + 1 < len(fibers):
                    pending = pool.submit(read, k + 1)
                yield fiber, rows, block, prepared

    def read_pds(self, i: int) -> np.ndarray | None:
        """Return uint16 photon-detector waveforms (n_pds_channels, n_samples), or None."""
        ds = self._group(i).get("pds")
        return None if ds is None else self._read_dataset(ds)

    def read_beam(self, i: int) -> np.ndarray:
        """Return event ``i``'s beam particles as a :data:`BEAM_DTYPE` array (maybe empty)."""
        ds = self._group(i).get("beam")
        if ds is None:
            return np.zeros(0, dtype=BEAM_DTYPE)
        return _as_beam_array(self._read_dataset(ds))

    def verify_readable(self) -> None:
        """Read every dataset once (not ``/truth``); raise :class:`RawFormatError` on the first
        one that cannot be read or holds ADC values above 4095, naming event and dataset."""
        for i in range(self.n_events):
            where = f"/events/{self.event_ids[i]:06d}"
            for fiber, _rows, block in self.iter_fibers(i):
                if block.size and int(block.max()) > ADC_MAX:
                    raise self._error(
                        f"dataset {where}/adc fiber {fiber} holds {int(block.max())}, above the "
                        f"12-bit maximum {ADC_MAX} (corrupt)"
                    )
            self.read_pds(i)
            self.read_beam(i)


def _attr(attrs: h5py.AttributeManager, name: str) -> Any:
    """Return an attribute as a Python/numpy scalar (bytes decoded), or None if absent."""
    if name not in attrs:
        return None
    value = attrs[name]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        value = value.reshape(()).item()
    return value


# --------------------------------------------------------------------------------------------
# Truth


def read_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return ``/truth`` of a simulated file as nested dicts of numpy arrays / scalars.

    For tests only: DQM payloads must never read the truth (their results must come from the
    waveforms alone), and no :class:`RawFile` method touches it.

    Raises:
        KeyError: the file has no ``/truth``.
    """
    with h5py.File(path, "r") as h5:
        if "truth" not in h5:
            raise KeyError(f"{os.fspath(path)}: no /truth group (not a simulated file)")
        return _read_group(h5["truth"])


def _read_group(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_group(item)
        elif h5py.check_string_dtype(item.dtype) is not None:
            value = item.asstr()[()]
            out[key] = value if isinstance(value, str) else np.asarray(value, dtype=str)
        else:
            value = item[()]
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out
