"""Result tables and how they are written: Markdown, CSV and JSON per table, one report.md for all."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

# Column formats: "pct" values are fractions shown as percentages; "db" PSNR; "ssim"; "num" plain
# numbers; "text" strings.
FORMATS = ("pct", "db", "ssim", "num", "text")


@dataclasses.dataclass
class Table:
  """One table of results: rows of {column: value}, with a format per column."""

  name: str
  title: str
  columns: list[str]
  formats: dict[str, str]
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  figures: list[str] = dataclasses.field(default_factory=list)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # more results, JSON only

  def cell(self, row: dict, col: str) -> str:
    v = row.get(col)
    fmt = self.formats.get(col, "num")
    if v is None:
      return "-"
    if fmt == "text" or isinstance(v, str):
      return str(v)
    if isinstance(v, float) and not math.isfinite(v):
      return "-" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if fmt == "pct":
      return f"{100 * v:.1f}"
    if fmt == "db":
      return f"{v:.2f}"
    if fmt == "ssim":
      return f"{v:.4f}"
    if isinstance(v, int):
      return str(v)
    return f"{v:.4g}"

  def markdown(self) -> str:
    align = ["---" if self.formats.get(c) == "text" else "---:" for c in self.columns]
    lines = [f"## {self.title}", ""]
    lines += ["| " + " | ".join(self.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(self.cell(r, c) for c in self.columns) + " |" for r in self.rows]
    lines += [""] + [f"{n}" for n in self.notes] + ([""] if self.notes else [])
    lines += [f"![{f}]({f})" for f in self.figures] + ([""] if self.figures else [])
    return "\n".join(lines)

  def csv(self) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(self.columns)
    for r in self.rows:
      w.writerow(["" if r.get(c) is None else r.get(c) for c in self.columns])
    return buf.getvalue()

  def to_json(self) -> dict:
    return {"name": self.name, "title": self.title, "columns": self.columns, "formats": self.formats,
            "rows": [{c: _json_value(r.get(c)) for c in self.columns} for r in self.rows], "notes": self.notes,
            "figures": self.figures, "extra": _json_value(self.extra)}


def own_columns(table: Table, own: Mapping[str, str], metrics: Sequence[str], *, where: str) -> None:
  """Adds "own <metric>" columns: each row's cell from the column of the network that reads it (`own`:
  row view -> target name; a row without an entry gets none), the form of tables whose rows each
  come with their own task network (SR4IR's: S->T read by the T trained on its outputs).

  The columns go right after "loss model" (or first, without it); `where` names the config field in errors.
  """
  if not own:
    return
  views = {r.get("view") for r in table.rows}
  unknown = sorted(set(own) - views)
  if unknown:
    raise ValueError(f"{where} names rows {unknown} that the table does not have; its rows: {sorted(views)}.")
  new = [f"own {m}" for m in metrics]
  for row in table.rows:
    t = own.get(row.get("view"))
    for m, col in zip(metrics, new):
      if t is not None:
        if f"{t} {m}" not in table.columns:
          raise ValueError(f"{where} maps row {row.get('view')!r} to {t!r}, which is not a column of this table; "
                           f"its networks: the targets the evaluator reads.")
        row[col] = row.get(f"{t} {m}")
  at = table.columns.index("loss model") + 1 if "loss model" in table.columns else 0
  table.columns[at:at] = new
  table.formats.update({c: table.formats.get(f"{next(iter(own.values()))} {m}", "pct") for c, m in zip(new, metrics)})
  table.notes.append("\"own\" columns: each row read by its own network (" +
                     ", ".join(f"{v}: {t}" for v, t in own.items()) + ").")


def _json_value(v):
  if isinstance(v, dict):
    return {str(k): _json_value(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_json_value(x) for x in v]
  if isinstance(v, float) and not math.isfinite(v):
    return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
  if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
    return _json_value(v.item())
  return v


def _write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_table(workdir: pathlib.Path, table: Table) -> list[pathlib.Path]:
  """<workdir>/<name>.md, .csv and .json."""
  out = []
  for suffix, text in ((".md", table.markdown()), (".csv", table.csv()),
                       (".json", json.dumps(table.to_json(), indent=2))):
    path = workdir / f"{table.name}{suffix}"
    _write(path, text)
    out.append(path)
  return out


def write_report(workdir: pathlib.Path, tables: list[Table], header: list[str]) -> pathlib.Path:
  """report.md with every table, and results.json with all of them."""
  _write(workdir / "results.json", json.dumps({t.name: t.to_json() for t in tables}, indent=2))
  path = workdir / "report.md"
  _write(path, "\n".join(["# rajax evaluation", ""] + header + [""] + [t.markdown() for t in tables]))
  return path


def pyplot():
  """matplotlib's pyplot with the file-only Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
