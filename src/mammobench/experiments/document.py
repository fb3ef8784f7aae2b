"""One document model for every report (compare, crossval, ablate): sections of text, tables and figures,
rendered as Markdown (``report.md``, images beside it) and as a self-contained HTML page (``report.html``,
images embedded) that can be mailed to a colleague."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mammobench.runtime import atomic_write_text


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table); "" = no caption
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, path)
    image_width: int = 480


def _md_table(frame: pd.DataFrame) -> str:
    cols = [str(c).replace("|", "/") for c in frame.columns]  # a "|" would end the cell
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(sections: list[Section], *, title: str, notice: str, out: Path) -> str:
    """The document as Markdown; images linked relative to ``out``."""
    lines = [f"# {title}", ""]
    if notice:
        lines += [f"> **{notice}**", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [t + "\n" for t in s.text]
        for caption, frame in s.tables:
            lines += ([f"**{caption}**", ""] if caption else []) + [_md_table(frame), ""]
        for caption, path in s.images:
            try:
                rel = path.resolve().relative_to(out.resolve())
            except ValueError:
                rel = path
            lines += [f"![{caption}]({rel})", f"*{caption}*", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin-top:36px;border-bottom:2px solid #e3e6ec;padding-bottom:4px}
.meta{color:#5b6474;font-size:13px}.notice{background:#fff4d6;border:1px solid #e8c55a;padding:10px 14px;border-radius:6px;
font-weight:600;margin:16px 0}p{line-height:1.5;font-size:14px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 18px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d9dde4;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f5;text-align:center;white-space:normal;max-width:130px;overflow-wrap:normal;word-break:normal}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfc}.caption{font-weight:600;font-size:13px;margin-top:10px}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0}figure img{max-width:100%;border:1px solid #e3e6ec}
figcaption{font-size:11.5px;color:#5b6474;max-width:100%}
"""


def render_html(sections: list[Section], *, title: str, notice: str, meta: str) -> str:
    """The document as one self-contained HTML page (images inline)."""
    def img(path: Path, width: int, caption: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
        return (f'<figure style="width:{width}px"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    body = [f"<h1>{html.escape(title)}</h1>", f'<div class="meta">{html.escape(meta)}</div>']
    if notice:
        body.append(f'<div class="notice">⚠ {html.escape(notice)}</div>')
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t).replace('`', '')}</p>" for t in s.text]
        for caption, frame in s.tables:
            if caption:
                body.append(f'<div class="caption">{html.escape(caption)}</div>')
            body.append(frame.to_html(index=False, border=0, escape=True))
        if s.images:
            body.append('<div class="figs">' + "".join(img(p, s.image_width, c) for c, p in s.images) + "</div>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def write_document(out: Path, sections: list[Section], *, title: str, meta: str, notice: str = "") -> tuple[Path, Path]:
    """``out/report.md`` and ``out/report.html``; returns their paths."""
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(sections, title=title, notice=notice, out=out))
    atomic_write_text(page, render_html(sections, title=title, notice=notice, meta=meta))
    return md, page
