"""Metric writers beside metrics.jsonl, for the tools users already read: TensorBoard.

The run kit opens them once a run's history is restored (:func:`open_writers`, on process 0
only, as metrics.jsonl), hands each epoch's record to :meth:`Writers.write` after
metrics.jsonl has it, and closes them at the end of the run. A writer gets the record's numeric
fields (:func:`scalars`: nested ones flattened with "/", e.g. ``division/net1/auroc``,
``mixture/weights/0``) at step = epoch. metrics.jsonl stays the record: a writer that fails
says so in one warning line and is off for the rest of the run, which goes on.

TensorBoard (``config.tensorboard``: "auto" = when tensorboardX is installed, "on", "off")
writes ``WORKDIR/tensorboard/`` with tensorboardX's event-file writer, synchronously (an I/O
error is raised here and named, never lost in a thread). Like metrics.jsonl, the event file
mirrors the restored history: a resumed run rewrites it from the history (keeping the wall times
the earlier files recorded), so an epoch redone after a kill appears once, and a TensorBoard
already showing the earlier files drops their steps (a session start at step 1).
"""

from __future__ import annotations

import importlib.util
import itertools
import numbers
import os
import struct
import time
from typing import Any, Protocol

from jaxnoise.progress import log

TENSORBOARD_DIR = "tensorboard"  # in the workdir
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard's event-file names
_OPENED = itertools.count()  # event files opened by this process


class Writer(Protocol):
    """One metric writer: scalars at a step, then closed."""

    name: str

    def write(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict) -> dict[str, float]:
    """The numeric fields of an epoch record (booleans as 0 / 1) but ``epoch``, the step; nested
    dicts and lists flattened with "/" (``{"mixture": {"weights": [a, b]}}`` ->
    ``mixture/weights/0``, ``mixture/weights/1``)."""
    out: dict[str, float] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{name}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{name}/{i}", v)
        elif isinstance(value, numbers.Real):
            out[name] = float(value)

    for key, value in record.items():
        if key != "epoch":
            visit(str(key), value)
    return out


class TensorBoard:
    """TensorBoard event files in ``folder``, rewritten from ``history`` when opened."""

    name = "tensorboard"

    def __init__(self, folder: str, history: list[dict]):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2, summary_pb2
        os.makedirs(folder, exist_ok=True)
        old = sorted(
            os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(EVENTS_PREFIX)
        )
        times = wall_times(old, event_pb2.Event)
        for path in old:
            os.remove(path)
        unique = f".{os.getpid()}.{next(_OPENED)}"  # the name's own time is in whole seconds
        self._file = EventsWriter(os.path.join(folder, "events"), unique)
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._file.write_event(event_pb2.Event(wall_time=time.time(), step=1, session_log=start))
        for r in history:
            self._put(r["epoch"], scalars(r), times.get(r["epoch"]))
        self._file.flush()

    def _put(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        Value = self._summary.Summary.Value
        summary = self._summary.Summary(
            value=[Value(tag=k, simple_value=v) for k, v in values.items()]
        )
        wall_time = time.time() if wall_time is None else wall_time
        self._file.write_event(self._event.Event(wall_time=wall_time, step=step, summary=summary))

    def write(self, step: int, values: dict[str, float]) -> None:
        """One event holding the epoch's scalars, flushed to the file."""
        self._put(step, values)
        self._file.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._file.close()


def wall_times(paths: list[str], event_type: type) -> dict[int, float]:
    """{step: wall time} of the scalar events in TFRecord event files, read in order (a torn or
    unreadable record ends its file: wall times are a nicety, the scalars come from history)."""
    times: dict[int, float] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                while len(head := f.read(12)) == 12:  # length (uint64), its masked CRC (uint32)
                    (length,) = struct.unpack("<Q", head[:8])
                    data = f.read(length)
                    if len(data) != length or len(f.read(4)) != 4:  # the data's CRC
                        break
                    event = event_type.FromString(data)
                    if event.summary.value:
                        times[int(event.step)] = float(event.wall_time)
        except Exception:  # a damaged file: the rest of its wall times is lost
            continue
    return times


class Writers:
    """The run's metric writers (none on processes other than 0); one that fails is dropped
    with a warning line."""

    def __init__(self, writers: list[Writer] | None = None, workdir: str = ""):
        self.writers = list(writers or [])
        self.workdir = workdir

    def write(self, record: dict) -> None:
        """An epoch's record to every writer, at step = its epoch."""
        if not self.writers:
            return
        values = scalars(record)
        for w in list(self.writers):
            self._try(w, lambda w=w: w.write(int(record["epoch"]), values))

    def close(self) -> None:
        """Close every writer (at the end of the run)."""
        for w in list(self.writers):
            self._try(w, w.close)
        self.writers = []

    def _try(self, w: Writer, action) -> None:
        try:
            action()
        except Exception as e:
            self.writers.remove(w)
            warn(w.name, e, self.workdir)


def warn(name: str, e: BaseException, workdir: str) -> None:
    """The one line of a writer that failed (the run goes on)."""
    log(
        f"warning: the {name} writer failed ({type(e).__name__}: {' '.join(str(e).split())}); "
        f"it is off for the rest of this run; {os.path.join(workdir, 'metrics.jsonl')} has "
        "every epoch, and a resumed run rewrites the writer's files from it"
    )


def available(package: str) -> bool:
    """Whether ``package`` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def open_writers(config: Any, workdir: str, history: list[dict]) -> Writers:
    """The writers ``config`` asks for, opened in ``workdir`` with the restored ``history``
    (call on process 0 only); a writer that cannot open is left out with a warning line."""
    opened = []
    if config.tensorboard == "on" or (config.tensorboard == "auto" and available("tensorboardX")):
        try:
            opened.append(TensorBoard(os.path.join(workdir, TENSORBOARD_DIR), history))
        except Exception as e:
            warn(TensorBoard.name, e, workdir)
    return Writers(opened, workdir)
