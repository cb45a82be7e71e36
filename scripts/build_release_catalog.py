"""Write cotlib/resources/release_files.csv: every SFT file of the paper's release (from its
dataset_info.json), classified, with the sha256 of the files at hand (for download checks).

    python scripts/build_release_catalog.py  # reads $COTLIB_DATA_DIR/paper_sft (../shared/data)
"""

import csv
import gzip
import hashlib
import json
from pathlib import Path

from cotlib import released

out = Path(__file__).resolve().parent.parent / "cotlib" / "resources" / "release_files.csv"
src = released.release_dir()
names = {v["file_name"] for v in json.load(gzip.open(src / "dataset_info.json.gz")).values()}
names |= {p.name.removesuffix(".gz") for p in src.glob("*.json.gz")} - {"dataset_info.json"}
rows = []
for name in sorted(names):
    f = released.parse_name(name)
    if f is None:
        continue
    local = src / f"{name}.gz"
    digest = hashlib.sha256(gzip.open(local).read()).hexdigest() if local.exists() else ""
    rows.append({"file": name, "dataset": f.dataset, "teacher": f.teacher, "level": f.level or "",
                 "format": f.format, "response": f.response, "sha256": digest})
with open(out, "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print(f"{len(rows)} files ({sum(bool(r['sha256']) for r in rows)} with checksums) -> {out}")
