"""Print the metrics modeldist exports as a Markdown table (name as queried, type, labels, meaning).

Read from the real collectors in ``modeldist.metrics`` through prometheus_client's default registry,
so the table is what ``/metrics`` serves. Usage: ``.venv/bin/python examples/grafana/metrics_table.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from prometheus_client import REGISTRY  # noqa: E402
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402

from modeldist import metrics  # noqa: E402

SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}


def rows() -> list[tuple[str, str, str, str]]:
    collectors = [o for n in metrics.__all__ if isinstance(o := getattr(metrics, n), MetricWrapperBase)]
    families = {m.name: m for c in collectors for m in c.describe()}
    labels = {m.name: list(c._labelnames) for c in collectors for m in c.describe()}
    registered = {f.name for f in REGISTRY.collect()}
    out = []
    for name in sorted(families):
        fam = families[name]
        if name not in registered:
            raise SystemExit(f"{name} is defined in modeldist.metrics but not in the default registry")
        series = "<br>".join(f"`{name}{s}`" for s in SUFFIXES[fam.type])
        names = labels[name] + (["le"] if fam.type == "histogram" else [])
        out.append((series, fam.type, ", ".join(f"`{n}`" for n in names) or "-", fam.documentation))
    return out


def main() -> None:
    print("| series | type | labels | meaning |")
    print("| --- | --- | --- | --- |")
    for r in rows():
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
