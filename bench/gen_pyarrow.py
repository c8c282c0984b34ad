#!/usr/bin/env python3
"""The benchmarks' pyarrow-written input (issue 10), as a user's pipeline would leave it.

    gen_pyarrow.py OUTDIR [ROWS] [FILES]

ROWS (default 2,000,000) rows x 32 float32 features f0..f31 (normal, a mean and a scale per
column) and an int8 label y in {0, 1}, in FILES (default 8) files part-NNNNN.parquet written by
`pq.write_table(..., compression="snappy", use_dictionary=False)`, one row group per file.
FILES = 1 writes one file with pyarrow's default row groups (1 Mi rows: 2 row groups of a
2,000,000-row file). Deterministic (seed 7).
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main(out, rows, files):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    means = rng.normal(0, 3, 32).astype(np.float32)
    scales = rng.uniform(0.5, 4, 32).astype(np.float32)
    for p in range(files):
        lo, hi = rows * p // files, rows * (p + 1) // files
        n = hi - lo
        cols = {f"f{j}": (rng.standard_normal(n, dtype=np.float32) * scales[j] + means[j]) for j in range(32)}
        cols["y"] = (rng.random(n) < 0.5).astype(np.int8)
        t = pa.table(cols)
        kw = {} if files == 1 else {"row_group_size": n}
        pq.write_table(t, os.path.join(out, f"part-{p:05d}.parquet"), compression="snappy",
                       use_dictionary=False, **kw)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000,
         int(sys.argv[3]) if len(sys.argv) > 3 else 8)
