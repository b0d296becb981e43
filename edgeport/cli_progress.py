"""Turn pipeline events into rich progress lines on stderr."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeport.pipeline.stages import Event


@contextmanager
def progress_listener(console: Console, verbose: bool = False):
    columns = [SpinnerColumn(finished_text="[green]✓[/green]"), TextColumn("{task.description}"), BarColumn(bar_width=12),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and not verbose) as progress:
        tasks: dict[tuple[str, str], int] = {}

        def listener(event: Event) -> None:
            name = f"{event.stage:<9} {event.label}"
            key = (event.stage, event.label)
            if event.kind == "start":
                tasks[key] = progress.add_task(name, total=1)
            elif event.kind == "done":
                if key not in tasks:
                    tasks[key] = progress.add_task(name, total=1)
                progress.update(tasks[key], completed=1, description=f"{name} [dim]{event.seconds:.1f} s[/dim]")
            elif event.kind == "cached":
                progress.add_task(f"{name} [dim](cached)[/dim]", total=1, completed=1)
            elif event.kind == "progress" and progress.live.is_started:
                progress.console.print(f"[dim]{event.stage:<9} {event.detail}[/dim]")
            elif event.kind == "warning":
                console.print(f"[yellow]warning:[/yellow] {event.detail}")

        yield listener
