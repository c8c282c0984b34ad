#!/usr/bin/env python3
"""A limit of the Parquet scan (issue 10): pyarrow reading the same row groups as
data-bench's plain loop (rank r reads row groups r, r+N, ... of the files in order), under
mpirun with mpi4py. Appends {bench: "scan-pyarrow", ranks, rows, bytes, seconds} to OUT.json.

    mpirun -n N python3 pyarrow_scan.py DIR_OR_FILE OUT.json
"""
import json
import os
import sys
import time

from mpi4py import MPI
import pyarrow.parquet as pq

comm = MPI.COMM_WORLD
rank, n = comm.Get_rank(), comm.Get_size()
src = sys.argv[1]
files = [src] if os.path.isfile(src) else sorted(
    os.path.join(src, f) for f in os.listdir(src) if f.endswith(".parquet"))
groups = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
mine = groups[rank::n]
comm.Barrier()
t = time.perf_counter()
rows = 0
for f, g in mine:
    rows += pq.ParquetFile(f).read_row_group(g).num_rows
s = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
rows = comm.allreduce(rows)
if rank == 0:
    with open(sys.argv[2], "a") as fh:
        fh.write(json.dumps({"bench": "scan-pyarrow", "ranks": n, "rows": rows, "bytes": 0, "seconds": s}) + "\n")
    print(f"scan-pyarrow ranks={n} rows={rows} {s:.3f} s")
