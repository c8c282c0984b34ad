#!/usr/bin/env python3
"""The peer of `gang standardize` (issue 10): the map stage as a user would write it with
mpi4py + pyarrow + numpy, doing gang's work.

    mpirun -n N python3 peer_map.py INDIR OUTDIR [FIGURES.json]

Rank r reads files r, r+N, ... of INDIR with `pq.read_table` (once: the tables stay in
memory between the two passes), computes count, mean and sample standard deviation of every
float column but `y` (float64 sums, allreduced), standardizes them to float32, writes one
file per input file with `pq.write_table(..., compression="snappy", use_dictionary=False)`
and fsyncs it (gang's output is durable before it is committed). Stage time: after
`MPI_Init` and a barrier, to the last rank done (a barrier). Appends
`{bench, ranks, rows, bytes, seconds}` to FIGURES.json.
"""
import json
import os
import sys
import time

from mpi4py import MPI
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main(indir, outdir, figures):
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    files = sorted(f for f in os.listdir(indir) if f.endswith(".parquet"))
    mine = files[rank::n]
    os.makedirs(outdir, exist_ok=True)
    comm.Barrier()
    t0 = time.perf_counter()
    tables = [pq.read_table(os.path.join(indir, f)) for f in mine]
    schema = pq.read_schema(os.path.join(indir, files[0]))
    feats = [f.name for f in schema if pa.types.is_floating(f.type) and f.name != "y"]
    acc = np.zeros((3, len(feats)))
    for t in tables:
        for j, c in enumerate(feats):
            x = t.column(c).to_numpy()
            acc[0, j] += len(x)
            acc[1, j] += x.sum(dtype=np.float64)
            acc[2, j] += np.square(x, dtype=np.float64).sum()
    tot = np.empty_like(acc)
    comm.Allreduce(acc, tot, op=MPI.SUM)
    count, mean = tot[0], tot[1] / tot[0]
    std = np.sqrt(np.maximum(tot[2] - count * mean * mean, 0) / np.maximum(count - 1, 1))
    inv = np.where(std > 0, 1 / std, 1.0)
    rows = written = 0
    for f, t in zip(mine, tables):
        cols = []
        for name in t.column_names:
            col = t.column(name)
            if name in feats:
                j = feats.index(name)
                x = col.to_numpy()
                col = pa.array((x - np.float32(mean[j])) * np.float32(inv[j]))
            cols.append(col)
        out = pa.table(cols, names=t.column_names)
        path = os.path.join(outdir, f)
        with open(path, "wb") as fh:
            pq.write_table(out, fh, compression="snappy", use_dictionary=False)
            fh.flush()
            os.fsync(fh.fileno())
        rows += out.num_rows
        written += os.path.getsize(path)
    seconds = time.perf_counter() - t0
    comm.Barrier()
    seconds = comm.allreduce(seconds, op=MPI.MAX)
    rows, written = comm.allreduce(rows), comm.allreduce(written)
    if rank == 0 and figures:
        with open(figures, "a") as fh:
            fh.write(json.dumps({"bench": "map-peer", "ranks": n, "rows": rows, "bytes": written,
                                 "seconds": seconds}) + "\n")
        print(f"  map-peer ranks={n} rows={rows} {seconds:.3f} s")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
