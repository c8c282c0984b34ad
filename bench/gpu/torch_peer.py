"""The PyTorch peer of bench/gpu/check.sh: the training gang-gpu-check times, on the same
data (its x.npy and y.npy), with the same model, batch size, optimizer and epochs, the data
already on the GPU; and NCCL allreduce of 64 MiB at world size 1 through torch.distributed.

    python3 bench/gpu/torch_peer.py --data DIR --out FILE.json [--epochs 2] [--batch-size 8192]
"""
import argparse
import json
import os
import time

import numpy as np
import torch


def train(kind, x, y, epochs, batch, lr):
    torch.manual_seed(3)
    f = x.shape[1]
    if kind == "logistic":
        model = torch.nn.Linear(f, 1)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(f, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    model = model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = x.shape[0]
    steps = n // batch
    epoch_seconds = []
    for epoch in range(epochs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        perm = torch.randperm(n, device="cuda")
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]).squeeze(1), y[idx])
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t)
    with torch.no_grad():
        final = float(loss_fn(model(x).squeeze(1), y))
    return {"epoch_seconds": epoch_seconds, "final_loss": final, "steps_per_epoch": steps}


def allreduce(nbytes, iters=50):
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
    buf = torch.ones(nbytes // 4, device="cuda")
    for _ in range(5):
        dist.all_reduce(buf)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buf)
    torch.cuda.synchronize()
    s = (time.perf_counter() - t) / iters
    dist.destroy_process_group()
    return {"seconds": s, "gb_per_s": nbytes / s / 1e9, "nccl": ".".join(map(str, torch.cuda.nccl.version()))}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=0.01)
    a = p.parse_args()
    x = torch.from_numpy(np.load(os.path.join(a.data, "x.npy"))).cuda()
    y = torch.from_numpy(np.load(os.path.join(a.data, "y.npy"))).cuda()
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "rows": x.shape[0]}
    for kind in ("logistic", "mlp64"):
        r = train(kind, x, y, a.epochs, a.batch_size, a.lr)
        res[kind] = r
        print(f"torch {kind}: epochs {[round(s, 3) for s in r['epoch_seconds']]} s, final loss {r['final_loss']:.6f}")
    try:
        r = allreduce(64 << 20)
        res["allreduce_64MiB_world1"] = r
        print(f"torch.distributed NCCL {r['nccl']} allreduce of 64 MiB at world 1: {r['seconds'] * 1e3:.3f} ms, {r['gb_per_s']:.1f} GB/s")
    except Exception as e:  # the peer's allreduce is a figure, not a check
        res["allreduce_error"] = str(e)
        print(f"torch.distributed allreduce failed: {e}")
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
