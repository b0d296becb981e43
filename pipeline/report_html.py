"""report.html: report.md as one self-contained page to share. Styles are inline, the plots are
embedded as data URIs, there is no script and nothing is fetched, so it opens offline, attached to
a mail or a CI job. It is rendered from report.md's own text (the small Markdown subset the
report writes: headings, paragraphs, pipe tables, lists, images, `code` and **bold**), so every
row and section report.md gains shows here too."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f3f3f5; padding: 0 3px; border-radius: 3px; }
.table { overflow-x: auto; margin: 8px 0 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d8d8dc; padding: 3px 8px; white-space: nowrap; }
th { background: #f3f3f5; text-align: left; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
td.pass, td.chosen { color: #1a7f37; font-weight: 600; } td.kept { color: #0969da; }
td.FAIL, td.failed, td.rejected { color: #cf222e; font-weight: 600; } td.pruned { color: #888; }
img { max-width: 100%; height: auto; display: block; margin: 10px 0; }
"""

IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
VERDICTS = {"pass", "FAIL", "chosen", "kept", "rejected", "failed", "pruned"}


def inline(text: str) -> str:
    """Escape, then `code` and **bold** (nothing inside code is formatted)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def attr(classes: str) -> str:
    return f' class="{classes}"' if classes else ""


def table(lines: list[str]) -> str:
    header, rules, body = cells(lines[0]), cells(lines[1]) if len(lines) > 1 else [], lines[2:]
    numeric = [r.endswith(":") and not r.startswith(":") for r in rules] + [False] * len(header)
    head = "".join(f'<th{attr("num" if numeric[i] else "")}>{inline(c)}</th>' for i, c in enumerate(header))
    rows = []
    for line in body:
        tds = []
        for i, c in enumerate(cells(line)):
            classes = " ".join(filter(None, ["num" if numeric[i] else "", c if c in VERDICTS else ""]))
            tds.append(f"<td{attr(classes)}>{inline(c)}</td>")
        rows.append(f"<tr>{''.join(tds)}</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def image(alt: str, name: str, folder: Path) -> str:
    path = folder / name
    if not path.is_file() or path.suffix.lower() != ".png":
        return f"<p>[{html.escape(alt)}: {html.escape(name)} not found]</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render(markdown: str, folder: Path) -> str:
    """The page for `markdown` (report.md's text); images are read from `folder`."""
    blocks: list[str] = []
    paragraph: list[str] = []
    lines = markdown.splitlines()
    title = "edgeport report"

    def end_paragraph() -> None:
        if paragraph:
            blocks.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            end_paragraph()
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            blocks.append(table(lines[start:i]))
            continue
        if line.startswith("- "):
            end_paragraph()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            blocks.append(f"<ul>{''.join(items)}</ul>")
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        found = IMAGE.match(line.strip())
        if heading or found or not line.strip():
            end_paragraph()
        if heading:
            level = len(heading.group(1))
            if level == 1:
                title = re.sub(r"`", "", heading.group(2))
            blocks.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif found:
            blocks.append(image(found.group(1), found.group(2), folder))
        elif line.strip():
            paragraph.append(line.strip())
        i += 1
    end_paragraph()
    body = "\n".join(blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            f"</body>\n</html>\n")
