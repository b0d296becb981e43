"""Turn pipeline events into progress on stderr: a rich live display in a terminal; plain
timestamped lines when stderr is a pipe or a file (CI, `| tee`, nohup), so a log shows each
stage as it starts and ends. Long loops (events of kind "progress", `done` of `total`) show a
count and an estimate of the time left: a bar in a terminal, a line every few seconds off one."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeport.pipeline.stages import Event

PLAIN_EVERY = 10.0  # seconds between two plain lines of one count (its first and last always show)


class Pace:
    """The time left for counts, from the pace since the first count of each loop."""

    def __init__(self):
        self.first: dict[tuple[str, str], tuple[float, int]] = {}

    def left(self, key: tuple[str, str], event: Event) -> float | None:
        now = time.monotonic()
        started, base = self.first.setdefault(key, (now, event.done))
        if event.done <= base or event.done >= event.total:
            return None
        return (now - started) / (event.done - base) * (event.total - event.done)


class Clock:
    """A stage's duration: the event's own, else the time since its start event (search
    candidates); and which stages were shown already."""

    def __init__(self):
        self.started: dict[tuple[str, str], float] = {}
        self.seen: set[tuple[str, str]] = set()

    def start(self, key: tuple[str, str]) -> None:
        self.started[key] = time.monotonic()
        self.seen.add(key)

    def first(self, key: tuple[str, str]) -> bool:
        """Whether a cache hit is news: later lookups of a stage this run already showed are not."""
        news = key not in self.seen
        self.seen.add(key)
        return news

    def took(self, key: tuple[str, str], event: Event) -> float:
        started = self.started.pop(key, None)
        return event.seconds or (time.monotonic() - started if started is not None else 0.0)


def count_text(event: Event, left: float | None) -> str:
    text = f"{event.done}/{event.total}"
    if left is not None:
        text += f", about {duration(left)} left"
    return text


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextmanager
def progress_listener(console: Console, verbose: bool = False, run_dir: Path | None = None):
    """A listener for pipeline events. With `run_dir`, third-party output goes to the run's log
    file while the block runs (`edgeport.logs.captured`), unless -v."""
    from edgeport import logs

    with logs.captured(run_dir, console) if run_dir is not None else nullcontext():
        if console.is_terminal:
            with live_listener(console, verbose) as listener:
                yield listener
        else:
            yield plain_listener(console)


@contextmanager
def live_listener(console: Console, verbose: bool):
    columns = [SpinnerColumn(finished_text="[green]✓[/green]"), TextColumn("{task.description}"), BarColumn(bar_width=12),
               TextColumn("[dim]{task.fields[count]}[/dim]"), TimeElapsedColumn()]
    # Only -v lets a library's own prints through to the terminal (above the live display).
    with Progress(*columns, console=console, transient=False, redirect_stdout=verbose, redirect_stderr=verbose) as progress:
        tasks: dict[tuple[str, str], int] = {}
        pace, clock = Pace(), Clock()
        lock = threading.Lock()  # search benchmarks report from one thread per device

        def listener(event: Event) -> None:
            name = f"{event.stage:<9} {escape(event.label)}"
            key = (event.stage, event.label)
            with lock:
                if event.kind == "start":
                    clock.start(key)
                    tasks[key] = progress.add_task(name, total=1, count="")
                elif event.kind == "done":
                    if key not in tasks:
                        tasks[key] = progress.add_task(name, total=1, count="")
                    task = progress.tasks[tasks[key]]
                    progress.update(tasks[key], completed=task.total, description=f"{name} [dim]{clock.took(key, event):.1f} s"
                                                                                  f"{escape(done_detail(event))}[/dim]")
                elif event.kind == "cached" and clock.first(key):
                    progress.add_task(f"{name} [dim](cached)[/dim]", total=1, completed=1, count="")
                elif event.kind == "progress" and event.total:
                    count = count_text(event, pace.left(key, event))
                    if event.detail:
                        count += f": {event.detail}"
                    if key not in tasks:
                        tasks[key] = progress.add_task(name, total=event.total, completed=event.done, count=escape(count))
                    else:
                        progress.update(tasks[key], total=event.total, completed=event.done, count=escape(count))
                elif event.kind == "progress":
                    progress.console.print(f"[dim]{event.stage:<9} {escape(event.detail)}[/dim]")
                elif event.kind == "warning":
                    progress.console.print(f"[yellow]warning:[/yellow] {escape(event.detail)}")

        yield listener


def done_detail(event: Event) -> str:
    return f": {event.detail}" if event.detail else ""


def plain_listener(console: Console, every: float = PLAIN_EVERY):
    """One timestamped line per stage start, end or cache hit; a loop's count at most every `every` seconds."""
    pace, clock = Pace(), Clock()
    last: dict[tuple[str, str], float] = {}
    lock = threading.Lock()

    def say(text: str) -> None:
        console.print(f"[{time.strftime('%H:%M:%S')}] {text}", markup=False, highlight=False, soft_wrap=True)

    def listener(event: Event) -> None:
        name = f"{event.stage:<9} {event.label}"
        key = (event.stage, event.label)
        with lock:
            if event.kind == "start":
                clock.start(key)
                say(f"{name} ...")
            elif event.kind == "done":
                say(f"{name} done in {clock.took(key, event):.1f} s{done_detail(event)}")
            elif event.kind == "cached" and clock.first(key):
                say(f"{name} (cached)")
            elif event.kind == "progress" and event.total:
                left = pace.left(key, event)
                now = time.monotonic()
                if key not in last or event.done >= event.total or now - last[key] >= every:
                    last[key] = now
                    say(f"{name} {count_text(event, left)}{done_detail(event)}")
            elif event.kind == "progress":
                say(f"{event.stage:<9} {event.detail}")
            elif event.kind == "warning":
                say(f"warning: {event.detail}")

    return listener
