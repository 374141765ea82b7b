"""`payauth settlement export`: one UTC day's captures and refunds, per merchant.

The rows come from the per-partition settlement lists the capture and refund
Functions append to in the same call as the money movement, so the export
holds exactly what moved that day. It writes the rows as CSV and Parquet, and
the per-merchant, per-currency totals as CSV.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from payauth.server.store import Store

COLUMNS = ("merchant_id", "kind", "id", "authorization_id", "account_id", "amount_minor",
           "currency", "at_ms", "method")
TOTAL_COLUMNS = ("merchant_id", "currency", "captures", "captured_minor", "refunds",
                 "refunded_minor", "net_minor")


async def export_day(store: Store, day: date, out_dir: Path) -> list[Path]:
    """Write settlement-<day>.csv, .parquet and -merchants.csv; return their paths."""
    rows = sorted(await store.settlement_rows(day.strftime("%Y%m%d")),
                  key=lambda r: (r["merchant_id"], int(r["at_ms"]), r["id"]))
    for r in rows:
        r.setdefault("method", "account")  # "points" for purchases paid in loyalty points
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"settlement-{day.isoformat()}"
    table = pa.table({
        column: pa.array([int(r[column]) if column in ("amount_minor", "at_ms") else r[column]
                          for r in rows],
                         type=pa.int64() if column in ("amount_minor", "at_ms") else pa.string())
        for column in COLUMNS
    })
    csv_path, parquet_path = stem.with_suffix(".csv"), stem.with_suffix(".parquet")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(table, parquet_path)

    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        t = totals[(r["merchant_id"], r["currency"])]
        if r["kind"] == "capture":
            t[0] += 1
            t[1] += int(r["amount_minor"])
        else:
            t[2] += 1
            t[3] += int(r["amount_minor"])
    merchants_path = out_dir / f"settlement-{day.isoformat()}-merchants.csv"
    with open(merchants_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TOTAL_COLUMNS)
        for (merchant_id, currency), (n_cap, cap, n_ref, ref) in sorted(totals.items()):
            writer.writerow((merchant_id, currency, n_cap, cap, n_ref, ref, cap - ref))
    return [csv_path, parquet_path, merchants_path]
