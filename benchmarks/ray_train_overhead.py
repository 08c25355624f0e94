"""Ray Train DDP against plain torch.distributed DDP: same model, same in-memory batches, 2 CPU processes.

Both sides run the identical step function on identical synthetic batches; only the process
launcher and the DDP setup differ (two processes spawned here with gloo, against a Ray Train
TorchTrainer with 2 workers). Throughput is measured inside the loop after warmup, so the ratio is
the per-step overhead of running under Ray Train; start-up is reported separately. Rounds
alternate between the two to spread the machine's noise over both.

    .venv/bin/python benchmarks/ray_train_overhead.py [--arch resnet18 --image-size 64 --batch 32 --steps 30 --rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_steps(model, batches, steps: int, warmup: int) -> float:
    """The shared step loop; returns images/s of this process over the timed steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batches[0][0].shape[0] / (time.perf_counter() - start)


def make_batches(args, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = args["image_size"]
    return [
        (
            torch.randn(args["batch"], 3, s, s, generator=g),
            torch.randint(0, 10, (args["batch"],), generator=g),
        )
        for _ in range(4)
    ]


def build(args):
    from resnet_platform.models import build_model

    torch.manual_seed(0)
    return build_model(args["arch"], num_classes=10)


# --------------------------------------------------------------------------- plain torch.distributed
def _plain_worker(rank: int, world: int, port: int, args: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(build(args))
    ips = run_steps(model, make_batches(args, rank), args["steps"], args["warmup"])
    Path(out_dir, f"rank{rank}.txt").write_text(str(ips))
    dist.destroy_process_group()


def plain_ddp(args: dict) -> float:
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Results come back through files: a multiprocessing Manager would fork this Ray driver.
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_plain_worker, args=(2, port, args, out_dir), nprocs=2, join=True)
        return sum(float(p.read_text()) for p in Path(out_dir).glob("rank*.txt"))


# --------------------------------------------------------------------------- Ray Train
def _ray_loop(args: dict) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    model = ray.train.torch.prepare_model(build(args))
    ips = run_steps(
        model, make_batches(args, ray.train.get_context().get_world_rank()), args["steps"], args["warmup"]
    )
    t = torch.tensor([ips], dtype=torch.float64)
    dist.all_reduce(t)
    if ray.train.get_context().get_world_rank() == 0:  # Ray Train V2 keeps metrics only with checkpoints
        Path(args["result_file"]).write_text(str(float(t.item())))
    ray.train.report({"images_per_s": float(t.item())})


def ray_ddp(args: dict, storage: str) -> tuple[float, float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    result_file = Path(storage) / f"ips-{time.time_ns()}.txt"
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={**args, "result_file": str(result_file)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage, name=f"overhead-{time.time_ns()}"),
    )
    trainer.fit()
    return float(result_file.read_text()), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="per process")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    args = {
        "arch": a.arch,
        "image_size": a.image_size,
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
    }

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    plain, ray_ips, ray_wall, plain_wall = [], [], [], []
    with tempfile.TemporaryDirectory() as storage:
        for r in range(a.rounds):
            t = time.perf_counter()
            plain.append(plain_ddp(args))
            plain_wall.append(time.perf_counter() - t)
            ips, wall = ray_ddp(args, storage)
            ray_ips.append(ips)
            ray_wall.append(wall)
            print(
                f"round {r + 1}: plain DDP {plain[-1]:.1f} img/s, Ray Train DDP {ips:.1f} img/s", flush=True
            )
    ray.shutdown()
    p_med, r_med = statistics.median(plain), statistics.median(ray_ips)
    print(
        f"\n{a.arch} {a.image_size}px, batch {a.batch}/process, 2 CPU processes, {a.steps} timed steps x {a.rounds} rounds"
    )
    print("| launcher | images/s (median) | wall time per run incl. start-up |")
    print("|---|---:|---:|")
    print(
        f"| plain torch.distributed DDP (mp.spawn, gloo) | {p_med:.1f} | {statistics.median(plain_wall):.1f} s |"
    )
    print(f"| Ray Train TorchTrainer DDP | {r_med:.1f} | {statistics.median(ray_wall):.1f} s |")
    print(f"\nratio Ray Train / plain DDP (steady-state throughput): {r_med / p_med:.3f}")


if __name__ == "__main__":
    main()
