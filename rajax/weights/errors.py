"""The error every weights reader raises for a missing, unreadable or ill-fitting file."""

from __future__ import annotations

from typing import Sequence


class WeightsError(ValueError):
  """A weights file is missing, unreadable, or does not fit the model."""


def mismatch_error(source: str, *, missing: Sequence[str], unexpected: Sequence[str], bad_shape: Sequence[str],
                   hint: str) -> WeightsError:
  """One error naming every missing key, unexpected key and wrong shape (20 of each at most)."""
  lines = [f"Weights from {source} do not fit the model:"]
  for title, items in (("missing keys", sorted(missing)), ("unexpected keys", sorted(unexpected)),
                       ("wrong shapes", sorted(bad_shape))):
    if items:
      lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
  lines.append(hint)
  return WeightsError("\n".join(lines))
