"""Counts from long loops reach the listener, and the CLI shows them off a terminal as plain
timestamped lines with the time left."""

from __future__ import annotations

import io
import re

from rich.console import Console

from edgeport.cli.progress import plain_listener
from edgeport.pipeline.stages import Event, Stages
from edgeport.progress import report


def test_a_loop_inside_a_stage_reports_its_counts_to_the_listener(tmp_path):
    events = []
    stages = Stages(tmp_path, events.append)

    def build(folder):
        for done in range(4):
            report(done, 3, f"epoch {done}")

    stages.folder("compress", "compress/1-distill", {"k": 1}, build, lambda d: d)
    counts = [(e.done, e.total, e.detail) for e in events if e.kind == "progress"]
    assert counts == [(0, 3, "epoch 0"), (1, 3, "epoch 1"), (2, 3, "epoch 2"), (3, 3, "epoch 3")]
    assert {(e.stage, e.label) for e in events} == {("compress", "compress/1-distill")}
    report(1, 1)  # outside a stage: nowhere to go, no error
    assert len(events) == 6


def test_plain_lines_have_timestamps_counts_and_show_a_cache_hit_once():
    text = io.StringIO()
    listener = plain_listener(Console(file=text, width=200))
    listener(Event("cached", "export", "interchange"))
    listener(Event("cached", "export", "interchange"))  # a later lookup of the same stage
    listener(Event("start", "quantize", "artifacts/openvino-int8"))
    listener(Event("done", "quantize", "artifacts/openvino-int8", seconds=41.04))
    for done in range(0, 11):
        listener(Event("progress", "compress", "compress/1-distill", f"epoch {done}", total=10, done=done))
    lines = text.getvalue().splitlines()
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\] ", ln) for ln in lines)
    body = [ln[11:] for ln in lines]
    assert body[:3] == ["export    interchange (cached)", "quantize  artifacts/openvino-int8 ...",
                        "quantize  artifacts/openvino-int8 done in 41.0 s"]
    # first and last count always; the ones between at most every 10 s
    assert body[3:] == ["compress  compress/1-distill 0/10: epoch 0", "compress  compress/1-distill 10/10: epoch 10"]


def test_counts_between_show_the_time_left():
    text = io.StringIO()
    listener = plain_listener(Console(file=text, width=200), every=0)
    for done in range(0, 4):
        listener(Event("progress", "search", "candidates", total=3, done=done))
    body = [ln[11:] for ln in text.getvalue().splitlines()]
    assert body[0] == "search    candidates 0/3" and body[-1] == "search    candidates 3/3"
    assert all(re.fullmatch(r"search    candidates [12]/3, about \d+ s left", ln) for ln in body[1:3]), body
