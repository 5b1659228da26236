"""Human-readable formatting shared by the CLI, the cluster client and the benchmarks."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(n: float, digits: int = 1) -> str:
    """``n`` bytes in binary units: ``512 B``, ``1.5 KiB`` ... ``2.0 TiB`` (TiB is the largest unit)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} TiB"
