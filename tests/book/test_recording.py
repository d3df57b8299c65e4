"""Recorded market data: write, read back, merge several venues in time order."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from book_helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from quoteforge.clock import SimClock
from quoteforge.exchanges.recording import (
    Record,
    RecordingError,
    RecordingWriter,
    merge_recordings,
    read_recording,
    record_batches,
)


@pytest.mark.parametrize("name", ["md.jsonl", "md.jsonl.gz"])
def test_round_trip_keeps_the_payload_text_exactly(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    clock = SimClock(start_ns=5)
    payloads = ['{"price":45283.50,"qty":0.10000000}', 'tab\there "quoted" ünïcode', "[]"]
    with RecordingWriter(path, clock=clock) as writer:
        writer.write("kraken", "book", payloads[0])
        writer.flush()
        writer.write("kraken", "book", payloads[1].encode(), t_ns=7)
        writer.write("binance", "btcusdt@depth", payloads[2], t_ns=9)
    assert writer.count == 3
    assert list(read_recording(path)) == [
        Record(5, "kraken", "book", payloads[0]),
        Record(7, "kraken", "book", payloads[1]),
        Record(9, "binance", "btcusdt@depth", payloads[2]),
    ]
    with RecordingWriter(path) as writer:  # appending to an existing recording
        writer.write("binance", "btcusdt@depth", "{}", t_ns=10)
    assert [r.t_ns for r in read_recording(path)] == [5, 7, 9, 10]


def test_merge_interleaves_by_receive_time(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with RecordingWriter(a) as wa, RecordingWriter(b) as wb:
        for t in (1, 4, 4, 9):
            wa.write("binance", "s", f"a{t}", t_ns=t)
        for t in (2, 4, 8):
            wb.write("kraken", "s", f"b{t}", t_ns=t)
    merged = list(merge_recordings([a, b]))
    assert [r.raw for r in merged] == ["a1", "b2", "a4", "a4", "b4", "b8", "a9"]


def test_shipped_recordings_merge_in_order() -> None:
    paths = [
        FIXTURES / "binance" / "depth_recording.jsonl",
        FIXTURES / "kraken" / "book_recording.jsonl",
    ]
    merged = list(merge_recordings(paths))
    assert {r.venue for r in merged} == {"binance", "kraken"}
    times = [r.t_ns for r in merged]
    assert times == sorted(times)
    assert len(merged) == sum(1 for p in paths for _ in read_recording(p))


def test_bad_lines_and_time_travel_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "venue": "x", "stream": "s", "raw": "{}"}\nnot json\n')
    with pytest.raises(RecordingError, match=r"bad.jsonl:2: not a recording line"):
        list(read_recording(bad))
    back = tmp_path / "back.jsonl"
    with RecordingWriter(back) as writer:
        writer.write("x", "s", "1", t_ns=5)
        writer.write("x", "s", "2", t_ns=3)
    with pytest.raises(RecordingError, match="goes back in time"):
        list(merge_recordings([back]))
    with pytest.raises(ValueError, match="give t_ns or construct the writer with a clock"):
        RecordingWriter(tmp_path / "c.jsonl").write("x", "s", "1")


def test_batches_give_the_merged_records_as_tuples(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    with RecordingWriter(a) as wa, RecordingWriter(b) as wb:
        for t in (1, 4, 4, 9):
            wa.write("binance", "s", f"a{t}", t_ns=t)
        for t in (2, 4, 8):
            wb.write("kraken", "s", f"b{t}", t_ns=t)
    with a.open("a", encoding="utf-8") as handle:
        handle.write("\n")  # blank lines are skipped
    expected = [(r.t_ns, r.venue, r.stream, r.raw) for r in merge_recordings([a, b])]
    assert [r for batch in record_batches([a, b]) for r in batch] == expected
    assert [r for batch in record_batches([a]) for r in batch] == [
        (r.t_ns, r.venue, r.stream, r.raw) for r in read_recording(a)
    ]
    kraken = [r for batch in record_batches([a, b], venue="kraken") for r in batch]
    assert [r[3] for r in kraken] == ["b2", "b4", "b8"]


def test_batches_deliver_the_good_records_before_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"t": 1, "venue": "x", "stream": "s", "raw": "{}"}\n'
        '{"t": "2", "venue": 7, "stream": "s", "raw": "[]"}\n'  # converted, as read_recording
        '{"t": 3, "venue": "x", "stream": "s", "raw": 5}\n'
    )
    batches = record_batches([path])
    assert next(batches) == [(1, "x", "s", "{}"), (2, "7", "s", "[]")]
    with pytest.raises(RecordingError, match=r"r.jsonl:3: 'raw' must be the payload text"):
        next(batches)
    back = tmp_path / "back.jsonl"
    with RecordingWriter(back) as writer:
        writer.write("x", "s", "1", t_ns=5)
        writer.write("x", "s", "2", t_ns=3)
    with pytest.raises(RecordingError, match=r"record 2 goes back in time \(3 < 5\)"):
        list(record_batches([back]))


def test_batches_check_order_and_shape_across_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of a few lines each: common-shape reads, a read with a line of another
    shape, and time going back across two reads, all read as ``read_recording`` does."""
    import quoteforge.exchanges.recording as recording

    monkeypatch.setattr(recording, "_BATCH_CHARS", 120)
    path = tmp_path / "r.jsonl"
    with RecordingWriter(path) as writer:
        for t in range(1, 40):
            writer.write("binance", "btcusdt@depth", f'{{"u":{t}}}', t_ns=t * 10)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"t": 400.0, "venue": "binance", "stream": "s", "raw": "x"}\n')
        handle.write('{"t": 401, "venue": "binance", "stream": "s", "raw": "y"}\n')
    batches = list(record_batches([path]))
    assert len(batches) > 5
    expected = [(r.t_ns, r.venue, r.stream, r.raw) for r in read_recording(path)]
    assert [r for batch in batches for r in batch] == expected
    assert type(expected[-2][0]) is int  # the float time was converted
    with path.open("a", encoding="utf-8") as handle:
        for t in (402, 403, 404, 405, 399):
            handle.write(f'{{"t": {t}, "venue": "binance", "stream": "s", "raw": "z"}}\n')
    with pytest.raises(RecordingError, match=r"record 46 goes back in time \(399 < 405\)"):
        list(record_batches([path]))


def _read_both(path: Path) -> list[list[object]]:
    """What record_batches gives (records, then the error text if any) with the
    compiled line reader and with the interpreted one."""
    import quoteforge.exchanges.recording as recording

    results = []
    for reader in (recording._parse_lines, None):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(recording, "_parse_lines", reader)
            got = _read_all(path)
        results.append(got)
    return results


def _read_all(path: Path) -> list[object]:
    got: list[object] = []
    try:
        for batch in record_batches([path]):
            got.extend(batch)
    except RecordingError as exc:
        got.append(str(exc))
    return got


def test_compiled_line_reader_is_built_under_ci() -> None:
    import os

    import quoteforge.exchanges.recording as recording

    if os.environ.get("CI") and not os.environ.get("QUOTEFORGE_PURE_PYTHON"):
        assert recording._parse_lines is not None, "the _fastrec extension was not built"


_ascii = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
_surrogates: tuple[Literal["Cs"]] = ("Cs",)  # not encodable in UTF-8
_texts = (
    _ascii
    | _ascii
    | _ascii
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=_surrogates), max_size=40)
    | st.sampled_from(
        [
            '{"e":"depthUpdate","b":[["1.0","2"]]}',
            'a\\"b/c\nd\te\rf\bg\fh\x01\x1f\x7f',
            "é€😀",
        ]
    )
)


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.integers(0, 2**62) | st.integers(-(2**63), 2**63 - 1) | st.integers(0, 10**19),
            # Mostly names of the common shape, sometimes ones only the interpreted
            # reader reads (non-ASCII, escaped).
            st.sampled_from(["binance"] * 8 + ["kraken", "b\u00e9", 'x"y']),
            st.sampled_from(["btcusdt@depth"] * 8 + ["book", "rest:/api?x=1", "s\\t"]),
            _texts,
        ),
        max_size=8,
    ),
    extra=st.just("")
    | st.just("")
    | st.sampled_from(
        [
            "\n",
            '{"t": 5, "venue": "x", "stream": "s", "raw": "r"}\n',
            '{"venue":"x","t":5,"stream":"s","raw":"r"}\n',
            '{"t":5.0,"venue":"x","stream":"s","raw":"r"}\n',
            '{"t":05,"venue":"x","stream":"s","raw":"r"}\n',
            '{"t":5,"venue":"x","stream":"s","raw":"\\u00e9\\ud83d\\ude00"}\n',
            '{"t":5,"venue":"x","stream":"s","raw":5}\n',
            '{"t":5,"venue":"x","stream":"s","raw":"r"} \n',
            '{"t":5,"venue":"x","stream":"s","raw":"r"}\r\n',
            '{"t":5,"venue":"x","stream":"s","raw":"unclosed}\n',
            "not json\n",
        ]
    ),
    at=st.integers(0, 12),
    ordered=st.sampled_from([True, True, True, False]),
)
def test_compiled_line_reader_reads_exactly_as_the_interpreted_one(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[int, str, str, str]],
    extra: str,
    at: int,
    ordered: bool,
) -> None:
    """Random records as RecordingWriter writes them (any text, times in any order,
    beyond 64 bits too), with one hand-written line of another shape put in: the same
    records and the same error either way."""
    path = tmp_path_factory.mktemp("rec") / "r.jsonl"
    if ordered:
        records = sorted(records)
    lines = [Record(t, venue, stream, raw).to_line() + "\n" for t, venue, stream, raw in records]
    lines.insert(min(at, len(lines)), extra)
    path.write_text("".join(lines), encoding="utf-8")
    compiled, interpreted = _read_both(path)
    assert compiled == interpreted
