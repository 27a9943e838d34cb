"""One training step (dm 0.5, batch norm inserted, batch statistics, channels-last), eager against
`torch.compile` (inductor), on the same random batch of 8 crops at 321, 2 threads.

    .venv/bin/python bench/compile_step.py

Reports the first step (compilation included) and the median of the next --steps steps of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from edgeseg.training import insert_batchnorm
from edgeseg.zoo.build import create_model

CLASSES = tuple(f"class_{i}" for i in range(11))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 321, 321).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(CLASSES), (8, 321, 321))
    for mode in ("eager", "compile"):
        model = create_model("deeplabv3_mnv2_dm05_voc", class_names=CLASSES)
        insert_batchnorm(model, [x[:4].contiguous()], frozen=False)
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        forward = torch.compile(model) if mode == "compile" else model
        times = []
        for _ in range(args.steps + 1):
            start = time.perf_counter()
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        print(f"{mode:<8} first step {times[0]:6.1f} s, then median {statistics.median(times[1:]):.3f} s/step",
              flush=True)


if __name__ == "__main__":
    main()
