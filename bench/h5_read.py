#!/usr/bin/env python3
"""The limit for gang's HDF5 reader: h5py/numpy reading every 1-D/2-D numeric dataset.

    python3 bench/h5_read.py FILE.h5 OUT.json
"""
import json
import sys
import time

import h5py
import numpy as np

path, out = sys.argv[1], sys.argv[2]
best = None
for _ in range(3):
    t = time.perf_counter()
    rows = nbytes = 0
    with h5py.File(path, "r") as f:
        for name in sorted(f.keys()):
            d = f[name]
            if isinstance(d, h5py.Dataset) and d.ndim in (1, 2) and np.issubdtype(d.dtype, np.number):
                a = d[...]
                rows = max(rows, a.shape[0])
                nbytes += a.nbytes
    s = time.perf_counter() - t
    best = s if best is None else min(best, s)
with open(out, "a") as f:
    f.write(json.dumps({"bench": "h5-h5py", "ranks": 1, "rows": rows, "bytes": nbytes, "seconds": best}) + "\n")
print(f"   h5-h5py ranks=1 rows={rows} {best:.3f} s  {rows / best / 1e6:.1f} Mrows/s  {nbytes / best / 1e6:.0f} MB/s")
