"""How a stage shows how far it got: the one progress protocol every stage calls, and its implementations.

A stage is given a `progress` and calls it one way, `progress(items, desc, total, unit="img")`: it returns ITEMS
(an iterable) to loop over while a bar labelled DESC counts them up to TOTAL (None: not known). With ITEMS None it
returns a `Bar` to advance by hand instead (tune's builds). The stage names its loops (DESC); the CLI chooses
where they show: `progress` below (a terminal's bar, or a log's lines), `quiet` for none.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Protocol, TypeVar

T = TypeVar("T")

LOG_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is a log, not a terminal


class Bar(Protocol):
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, text: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


class Progress(Protocol):
    def __call__(self, items: Iterable[T] | None, desc: str, total: int | None, unit: str = "img"): ...


def progress(items, desc: str, total: int | None, unit: str = "img"):
    """A progress bar on stderr when it is a terminal; in a log (CI, `make ... > log`), a line every few seconds."""
    if not sys.stderr.isatty():
        bar = LogBar(desc, total, sys.stderr, LOG_PROGRESS_EVERY)
        return bar if items is None else bar.wrap(items)
    from tqdm import tqdm
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False)


def showing(note) -> Progress:
    """`progress`, whose bar on a terminal also shows NOTE(item) of the latest item (demo-ckpt's loss); a log's
    lines stay `n/N`."""
    def shown(items, desc: str, total: int | None, unit: str = "img"):
        bar = progress(items, desc, total, unit)
        show = getattr(bar, "set_postfix_str", None)  # a terminal's bar; a log's wrapped items have none
        for item in bar:
            if show:
                show(note(item), refresh=False)
            yield item
    return shown


def quiet(items, desc: str, total: int | None, unit: str = "img"):
    """ITEMS, nothing shown: the default of the stages whose loops a library caller may not want to see (loops
    only: a stage that advances a bar by hand is given `progress`)."""
    return items


class LogBar:
    """What a log gets instead of a bar: `DESC: n/N (T s)[, POSTFIX]` once EVERY seconds have passed since the last
    line. A bar's carriage returns would make a log unreadable, and silence looks like a hang."""

    def __init__(self, desc: str, total: int | None, stream, every: float, clock=time.monotonic):
        self.desc, self.total, self.stream, self.every, self.clock = desc, total, stream, every, clock
        self.done, self.postfix = 0, ""
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            total = self.total if self.total is not None else "?"
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {self.done}/{total} ({now - self.start:.0f} s){extra}", file=self.stream, flush=True)
            self.last = now

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass

    def wrap(self, iterable):
        if self.total is None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        for item in iterable:
            yield item
            self.update()
