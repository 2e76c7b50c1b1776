"""np04 raw HDF5: the writer and reader round-trip, and every format fault is named."""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from p3s.payloads.rawformat import (
    BEAM_DTYPE,
    Geometry,
    RawFormatError,
    RawWriter,
    open_raw,
    parse_filename,
    raw_filename,
    read_truth,
)

from .conftest import write_plain_file

# --------------------------------------------------------------------------------------------
# Geometry


def test_full_geometry_is_the_protodune_sp_layout():
    geo = Geometry.full()
    assert geo.n_channels == 15360
    assert np.array_equal(np.sort(geo.channel), np.arange(15360))
    assert geo.fibers.size == 120
    per_apa_plane = Counter(zip(geo.apa.tolist(), geo.plane.tolist(), strict=True))
    for apa in range(6):
        assert [per_apa_plane[(apa, p)] for p in range(3)] == [800, 800, 960]
    assert dict(zip(geo.apa.tolist(), geo.tpc.tolist(), strict=True)) == {
        0: 1,
        1: 2,
        2: 5,
        3: 6,
        4: 9,
        5: 10,
    }
    for fiber in (0, 57, 119):
        rows = geo.rows_of_fiber(fiber)
        assert isinstance(rows, slice) and rows.stop - rows.start == 128
        assert np.bincount(geo.plane[rows]).tolist() == [40, 40, 48]
    # offline numbering: apa * 2560 + in-APA index, U then V then X
    offset = np.array([0, 800, 1600])[geo.plane]
    assert np.array_equal(geo.channel, geo.apa * 2560 + offset + geo.wire)


def test_reduced_geometry_keeps_whole_fibers_with_full_numbering():
    geo = Geometry.reduced(n_apas=2, fibers_per_apa=3)
    assert geo.n_channels == 2 * 3 * 128
    assert geo.fibers.tolist() == [0, 1, 2, 20, 21, 22]
    assert geo.apas.tolist() == [0, 1] and geo.tpcs.tolist() == [1, 2]
    assert set(geo.channel[geo.apa == 1]) <= set(range(2560, 5120))
    assert geo.n_pds_channels == 20


def test_geometry_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="apa has 2 entries, channel has 3"):
        Geometry(
            channel=[0, 1, 2], apa=[0, 0], tpc=[1] * 3, plane=[0] * 3, wire=[0] * 3, fiber=[0] * 3
        )


def test_rows_of_fiber_for_interleaved_rows_is_an_index_array():
    geo = Geometry(
        channel=np.arange(6), apa=[0] * 6, tpc=[1] * 6, plane=[2] * 6, wire=np.arange(6),
        fiber=[0, 1, 0, 1, 0, 1],
    )  # fmt: skip
    assert geo.rows_of_fiber(1).tolist() == [1, 3, 5]
    with pytest.raises(KeyError, match="fiber 7"):
        geo.rows_of_fiber(7)


# --------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
def test_reader_returns_what_the_writer_wrote(tmp_path, compression):
    path = tmp_path / raw_filename(12, 4)
    geo = Geometry.reduced(1, 2, pds_per_apa=3)
    written = write_plain_file(
        path, run=12, subrun=4, n_events=3, geometry=geo, compression=compression
    )
    with open_raw(path) as raw:
        assert (raw.run, raw.subrun, raw.n_ticks, raw.n_events) == (12, 4, 200, 3)
        assert raw.tick_us == 0.5 and raw.drift_speed_mm_per_us == 1.6
        assert raw.detector == "protodune-sp" and raw.created.startswith("20")
        assert raw.event_ids == [0, 1, 2]
        for name in ("channel", "apa", "tpc", "plane", "wire", "fiber", "pds_channel", "pds_apa"):
            assert np.array_equal(getattr(raw.geometry, name), getattr(geo, name)), name
        for i in range(3):
            assert raw.event_meta(i) == written["meta"][i]
            adc = raw.read_adc(i)
            assert adc.dtype == np.uint16
            assert np.array_equal(adc, written["adc"][i])
            assert np.array_equal(raw.read_pds(i), written["pds"][i])
            beam = raw.read_beam(i)
            assert beam.dtype == BEAM_DTYPE
            assert np.array_equal(beam, written["beam"][i])
        raw.verify_readable()


def test_adc_is_chunked_by_fiber(raw_file):
    path = raw_file(n_ticks=300)
    with h5py.File(path) as h5:
        assert h5["events/000000/adc"].chunks == (128, 300)


@pytest.mark.parametrize(
    ("reuse_buffer", "read_ahead"), [(False, False), (True, False), (True, True)]
)
def test_iter_fibers_covers_every_row_exactly_once(raw_file, reuse_buffer, read_ahead):
    path = raw_file(geometry=Geometry.reduced(2, 3))
    with open_raw(path) as raw:
        full = raw.read_adc(1)
        seen = np.zeros(raw.geometry.n_channels, dtype=int)
        fibers = []
        for fiber, rows, block in raw.iter_fibers(
            1, reuse_buffer=reuse_buffer, read_ahead=read_ahead
        ):
            fibers.append(fiber)
            seen[rows] += 1
            assert np.array_equal(block, full[rows])
            assert np.all(raw.geometry.fiber[rows] == fiber)
        assert np.all(seen == 1)
        assert fibers == raw.geometry.fibers.tolist()


@pytest.mark.parametrize("read_ahead", [False, True])
def test_iter_fibers_prepared_gives_each_block_its_own_result(raw_file, read_ahead):
    path = raw_file(geometry=Geometry.reduced(2, 3))
    threads = set()

    def prepare(block: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return block.sum(axis=1)  # a result of this block, computed before it is reused

    with open_raw(path) as raw:
        full = raw.read_adc(1)
        n = 0
        for _fiber, rows, block, sums in raw.iter_fibers_prepared(
            1, prepare, read_ahead=read_ahead
        ):
            assert np.array_equal(block, full[rows])
            assert np.array_equal(sums, full[rows].sum(axis=1))
            n += 1
        assert n == len(raw.geometry.fibers)
    # With read-ahead, prepare runs in the reading thread, beside the caller's work.
    assert all(name.startswith("p3s-read-ahead") for name in threads) == read_ahead


def test_iter_fibers_with_interleaved_rows(tmp_path):
    base = Geometry.reduced(1, 2, pds_per_apa=0)
    order = np.argsort(np.arange(base.n_channels) % 2, kind="stable")  # mix the two fibers
    geo = Geometry(
        **{n: getattr(base, n)[order] for n in ("channel", "apa", "tpc", "plane", "wire", "fiber")}
    )  # noqa: E501
    path = tmp_path / "mixed.h5"
    written = write_plain_file(path, geometry=geo, n_events=1)
    with open_raw(path) as raw:
        seen = np.zeros(geo.n_channels, dtype=int)
        for _fiber, rows, block in raw.iter_fibers(0):
            seen[rows] += 1
            assert np.array_equal(block, written["adc"][0][rows])
        assert np.all(seen == 1)


def test_file_without_optional_members_reads_none_and_empty(tmp_path):
    geo = Geometry.reduced(1, 1, pds_per_apa=0)
    path = tmp_path / raw_filename(1, 1)
    with RawWriter(path, run=1, subrun=1, geometry=geo, n_ticks=10) as writer:
        writer.add_event(np.zeros((128, 10), np.uint16), timestamp_ns=5, trigger=0)
    with open_raw(path) as raw:
        assert raw.geometry.pds_channel is None
        assert raw.read_pds(0) is None
        assert raw.read_beam(0).shape == (0,) and raw.read_beam(0).dtype == BEAM_DTYPE


def test_raw_file_is_usable_without_with_block(raw_file):
    raw = open_raw(raw_file())
    assert raw.n_events == 2
    raw.close()
    raw.close()  # idempotent


def test_read_truth_is_separate_from_the_reader(raw_file):
    path = raw_file()
    truth = read_truth(path)
    assert truth["note"] == "plain" and truth["values"].tolist() == [0, 1, 2]
    assert not [name for name in dir(open_raw(path)) if "truth" in name]


# --------------------------------------------------------------------------------------------
# Writer refusals


def test_writer_refuses_bad_adc(tmp_path):
    geo = Geometry.reduced(1, 1)
    with RawWriter(tmp_path / "x.h5", run=1, subrun=1, geometry=geo, n_ticks=10) as writer:
        with pytest.raises(TypeError, match="uint16"):
            writer.add_event(np.zeros((128, 10), np.int32), timestamp_ns=0, trigger=0)
        with pytest.raises(ValueError, match=r"shape \(128, 9\)"):
            writer.add_event(np.zeros((128, 9), np.uint16), timestamp_ns=0, trigger=0)
        with pytest.raises(ValueError, match="4096, above the 12-bit maximum"):
            writer.add_event(np.full((128, 10), 4096, np.uint16), timestamp_ns=0, trigger=0)


def test_writer_shows_the_file_only_when_complete(tmp_path):
    geo = Geometry.reduced(1, 1)
    path = tmp_path / raw_filename(3, 1)
    writer = RawWriter(path, run=3, subrun=1, geometry=geo, n_ticks=10)
    writer.add_event(np.zeros((128, 10), np.uint16), timestamp_ns=0, trigger=0)
    assert not path.exists()
    assert writer.close() == path
    assert path.exists() and list(tmp_path.iterdir()) == [path]


def test_writer_removes_partial_file_after_an_error(tmp_path):
    geo = Geometry.reduced(1, 1)
    with (
        pytest.raises(RuntimeError, match="boom"),
        RawWriter(tmp_path / "x.h5", run=1, subrun=1, geometry=geo, n_ticks=10),
    ):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Faults: each one raises RawFormatError naming the file and the fault


def _edit(path: Path, action) -> None:
    with h5py.File(path, "r+") as h5:
        action(h5)


def _fault(path: Path) -> RawFormatError:
    with pytest.raises(RawFormatError) as info, open_raw(path) as raw:
        raw.verify_readable()
    assert str(path) in str(info.value)
    return info.value


def test_format_version_2_is_refused_with_the_documented_message(raw_file):
    path = raw_file()
    _edit(path, lambda h5: h5.attrs.__setitem__("format_version", 2))
    err = _fault(path)
    assert str(err) == f"{path}: format_version 2 is not supported (this reader reads version 1)"


def test_non_hdf5_file_is_refused(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    path.write_text("run,subrun\n1,1\n" * 100)
    assert "not an HDF5 file" in str(_fault(path))


def test_truncated_file_is_refused(raw_file):
    path = raw_file()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in str(_fault(path))


def test_corrupt_bytes_in_adc_are_reported_with_event_and_dataset(raw_file):
    path = raw_file(n_events=2)
    with h5py.File(path) as h5:
        info = h5["events/000001/adc"].id.get_chunk_info(1)
    with path.open("r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xa5" * 16)
    with open_raw(path) as raw:  # metadata is intact: opening works
        raw.read_adc(0)
        with pytest.raises(RawFormatError, match="/events/000001/adc"):
            raw.read_adc(1)
        for read_ahead in (False, True):  # the buffered reads, in this thread or another
            with pytest.raises(RawFormatError, match="/events/000001/adc"):
                list(raw.iter_fibers(1, reuse_buffer=True, read_ahead=read_ahead))
    err = _fault(path)
    assert "/events/000001/adc" in str(err) and "corrupt" in str(err)


def test_out_of_range_adc_from_another_writer_is_reported(raw_file):
    path = raw_file(n_events=1)

    def replace_adc(h5):
        adc = h5["events/000000/adc"][()]
        adc[5, 7] = 0xF123  # high nibble set: impossible for a 12-bit ADC
        del h5["events/000000/adc"]
        h5["events/000000"].create_dataset("adc", data=adc)  # contiguous, no checksum

    _edit(path, replace_adc)
    err = _fault(path)
    assert "/events/000000/adc" in str(err) and "61731" in str(err)


def test_missing_geometry_dataset_is_refused(raw_file):
    path = raw_file()
    _edit(path, lambda h5: h5.__delitem__("geometry/fiber"))
    assert "dataset /geometry/fiber is missing" in str(_fault(path))


def test_geometry_datasets_of_unequal_length_are_refused(raw_file):
    path = raw_file()

    def shorten(h5):
        wire = h5["geometry/wire"][:-1]
        del h5["geometry/wire"]
        h5["geometry"].create_dataset("wire", data=wire)

    _edit(path, shorten)
    assert "/geometry datasets differ in length" in str(_fault(path))


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (np.zeros((256, 200), np.int16), "/events/000001/adc has dtype int16, expected uint16"),
        (np.zeros((256, 199), np.uint16), "/events/000001/adc has shape (256, 199), expected"),
    ],
)
def test_wrong_adc_dtype_or_shape_is_refused(raw_file, data, fault):
    path = raw_file()

    def replace(h5):
        del h5["events/000001/adc"]
        h5["events/000001"].create_dataset("adc", data=data)

    _edit(path, replace)
    assert fault in str(_fault(path))


@pytest.mark.parametrize(
    ("edit", "fault"),
    [
        (lambda a: a.__delitem__("tick_us"), "root attribute 'tick_us' is missing"),
        (lambda a: a.__setitem__("n_ticks", "200"), "root attribute n_ticks is '200', not an"),
        (lambda a: a.__setitem__("format", "other"), "format is 'other', expected"),
        (lambda a: a.__delitem__("format"), "root attribute 'format' is missing"),
        (lambda a: a.__setitem__("run", 99), "file name says run 1 subrun 1 but the attributes"),
    ],
)
def test_bad_root_attributes_are_refused(raw_file, edit, fault):
    path = raw_file()
    _edit(path, lambda h5: edit(h5.attrs))
    assert fault in str(_fault(path))


def test_missing_adc_and_event_attribute_are_refused(raw_file):
    path = raw_file()
    _edit(path, lambda h5: h5.__delitem__("events/000000/adc"))
    assert "dataset /events/000000/adc is missing" in str(_fault(path))
    path = raw_file(run=2)
    _edit(path, lambda h5: h5["events/000001"].attrs.__delitem__("trigger"))
    assert "/events/000001 attribute trigger is None" in str(_fault(path))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_raw(tmp_path / "nope.h5")


def test_raw_format_error_survives_pickling():
    err = pickle.loads(pickle.dumps(RawFormatError("a.h5", "broken")))
    assert isinstance(err, ValueError) and str(err) == "a.h5: broken" and err.fault == "broken"


# --------------------------------------------------------------------------------------------
# File names


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("np04_raw_run004649_0001_dl1.h5", (4649, 1, 1)),
        ("/inbox/np04_raw_run000012_0034_dl10.h5", (12, 34, 10)),
        ("np04_raw_run4649_0001_dl1.h5", None),
        ("np04_raw_run004649_0001_dl1.root", None),
        ("other.h5", None),
    ],
)
def test_parse_filename(name, parsed):
    assert parse_filename(name) == parsed


def test_raw_filename_round_trips():
    assert raw_filename(4649, 1) == "np04_raw_run004649_0001_dl1.h5"
    assert parse_filename(raw_filename(7, 12, 3)) == (7, 12, 3)
