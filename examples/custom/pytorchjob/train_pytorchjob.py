"""A script written for Kubeflow's PyTorchJob, unchanged: it knows nothing of llmtrain.

It reads only what a PyTorchJob pod provides (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
PET_MASTER_PORT, MASTER_ADDR, MASTER_PORT) and lets `init_process_group()` read the rest from the environment
(env://), then checks that the world it joined is the one the job promised, all-reduces a tensor, trains a little
linear model with DDP and exits 0. It reports no progress: the job still runs and succeeds, and its status says
that progress is not reported.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    nnodes = int(os.environ["PET_NNODES"])
    nproc = int(os.environ["PET_NPROC_PER_NODE"])
    node_rank = int(os.environ["PET_NODE_RANK"])
    master = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    pet_master = f"{os.environ['PET_MASTER_ADDR']}:{os.environ['PET_MASTER_PORT']}"

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == nnodes * nproc, f"world {world} != PET_NNODES {nnodes} x PET_NPROC_PER_NODE {nproc}"

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu"
    ones = torch.ones(1, device=device)
    dist.all_reduce(ones)
    assert int(ones.item()) == world, ones

    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(8, 1).to(device))
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.arange(8, dtype=torch.float32, device=device) / 8
    for _ in range(20):
        x = torch.randn(16, 8, device=device)
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), x @ target)
        optim.zero_grad()
        loss.backward()
        optim.step()
    print(
        f"pytorchjob-style: rank {rank}/{world} on node {node_rank} of {nnodes} ({nproc} per node), "
        f"MASTER {master}, PET_MASTER {pet_master}: all-reduce ok, loss {loss.item():.4f}",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
