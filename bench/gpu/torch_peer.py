"""The PyTorch peer of bench/gpu/check.sh: the training gang-gpu-check times, on the same
data (its x.npy and y.npy), with the same model, batch size, optimizer and epochs, the data
already on the GPU; a device-to-device copy of 64 MiB (the limit of gang's out-of-place
allreduce at world 1); torch.distributed's allreduce at world 1 (its overhead).

Timings are like for like; final losses are not compared with gang's: torch initialises
its layers its own way and shuffles single rows (gang: zeros or He/Xavier from its seed,
blocks of rows).

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


def timed(f, iters=50):
    """Seconds per call of f, after 5 calls of warm-up, the GPU synchronized around."""
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def copy(nbytes):
    """A device-to-device copy of nbytes: the limit of an out-of-place allreduce at world 1."""
    src = torch.ones(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return {"seconds": timed(lambda: dst.copy_(src))}


def allreduce(nbytes):
    """torch.distributed's allreduce at world 1 (in place: NCCL returns without a copy, so
    this is the call's overhead)."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
    buf = torch.ones(nbytes // 4, device="cuda")
    s = timed(lambda: dist.all_reduce(buf))
    dist.destroy_process_group()
    return {"seconds": s, "nccl": ".".join(map(str, torch.cuda.nccl.version()))}


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
    r = copy(64 << 20)
    res["copy_64MiB"] = r
    print(f"torch device-to-device copy of 64 MiB: {r['seconds'] * 1e3:.3f} ms")
    try:
        r = allreduce(64 << 20)
        res["allreduce_64MiB_world1"] = r
        print(f"torch.distributed NCCL {r['nccl']} allreduce of 64 MiB at world 1, in place (overhead only): {r['seconds'] * 1e3:.3f} ms")
    except Exception as e:  # the peer's allreduce is a figure, not a check
        res["allreduce_error"] = str(e)
        print(f"torch.distributed allreduce failed: {e}")
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
