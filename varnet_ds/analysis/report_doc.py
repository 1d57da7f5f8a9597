"""A tiny document model (headings, paragraphs, lists, tables, figures) rendered to Markdown and to one
self-contained HTML file (CSS inline, PNGs as base64 data URIs, no scripts or external resources)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

DIGITS = {"ssim": 4, "psnr": 2, "nmse": 5}  # decimals of each metric in every report (compare, study, W&B)


def fmt(value: Optional[float], metric: str, signed: bool = False) -> str:
    """A metric value with the metric's decimals (:data:`DIGITS`), ``+`` before positives when ``signed``; ``n/a``
    for ``None``/NaN."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:{'+' if signed else ''}.{DIGITS[metric]}f}"


_NUMERIC = re.compile(r"^[+\-−]?(\d[\d,]*\.?\d*|\.\d+|nan|n/a)(e[+-]?\d+)?( ?\(.*\))?$|^\[.*\]$", re.IGNORECASE)


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    """A paragraph; inline `code` and **bold** are rendered in HTML."""

    text: str
    css: str = ""


@dataclass
class Bullets:
    items: List[str]
    css: str = ""


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG in the report folder (referenced by file name in Markdown, embedded in HTML)."""

    path: Path
    caption: str
    alt: str = ""


Block = Union[Heading, Para, Bullets, Table, Figure]


@dataclass
class Document:
    title: str
    blocks: List[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figures(self) -> List[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document) -> str:
    """Markdown with figures linked by file name (the report folder holds the PNGs)."""
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [b.caption, ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join("---:" if _numeric_column(b, j) else "---" for j in range(len(b.header))) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{b.alt or b.caption}]({b.path.name})", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _numeric_column(table: Table, j: int) -> bool:
    cells = [row[j] for row in table.rows if row[j] not in ("", "—")]
    return bool(cells) and all(_NUMERIC.match(str(c).strip()) for c in cells)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1200px; margin: 24px auto; padding: 0 20px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; border-bottom: 2px solid #1f77b4; padding-bottom: 6px; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
h3 { font-size: 1.08em; margin-top: 1.3em; }
nav { display: flex; flex-wrap: wrap; row-gap: 2px; background: #f6f8fa; border: 1px solid #e1e4e8;
      border-radius: 6px; padding: 8px 16px; font-size: 0.92em; }
nav a { margin-right: 14px; color: #0366d6; text-decoration: none; white-space: nowrap; }
.tablewrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0 18px; font-size: 0.86em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; }
th { background: #f0f3f6; }
tr:nth-child(even) td { background: #fafbfc; }
td:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.caption { color: #555; font-size: 0.9em; margin: 4px 0 8px; }
figure { margin: 12px 0 22px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 4px; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
.warnings { background: #fff8e1; border-left: 4px solid #f0ad4e; padding: 8px 12px 8px 30px; }
.lead { font-size: 1.08em; background: #f4f9f4; border-left: 4px solid #2c7a2c; padding: 10px 14px; }
.note { background: #eef6fc; border-left: 4px solid #1f77b4; padding: 8px 12px; }
.ok { color: #2c7a2c; }
"""


def render_html(doc: Document, base_dir: Path) -> str:
    """One self-contained HTML page; figure PNGs (relative to ``base_dir``) are embedded as data URIs."""
    toc = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(doc.title)}</title>", f"<style>{CSS}</style></head><body>",
           f"<h1>{html.escape(doc.title)}</h1>"]
    if toc:
        out.append("<nav>" + "".join(f'<a href="#{_anchor(h.text)}">{html.escape(h.text)}</a>' for h in toc)
                   + "</nav>")
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f'<h{b.level} id="{_anchor(b.text)}">{html.escape(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            css = f' class="{b.css}"' if b.css else ""
            out.append(f"<p{css}>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            css = f' class="{b.css}"' if b.css else ""
            out.append(f"<ul{css}>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_html_table(b))
        elif isinstance(b, Figure):
            data = base64.b64encode((base_dir / b.path.name).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.alt or b.caption)}">'
                       f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_table(table: Table) -> str:
    numeric = [_numeric_column(table, j) for j in range(len(table.header))]
    parts = []
    if table.caption:
        parts.append(f'<p class="caption">{_inline(table.caption)}</p>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    parts.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>')
    for row in table.rows:
        parts.append("<tr>" + "".join(f'<td class="num">{html.escape(str(c))}</td>' if num
                                      else f"<td>{html.escape(str(c))}</td>" for c, num in zip(row, numeric))
                     + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)

