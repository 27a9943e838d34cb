"""Ship a run's checkpoint as a trained zoo entry's weights, and print what the registry must record.

    .venv/bin/python tools/ship_weights.py runs/camvid_edgetpu_up/best.safetensors deeplab_edgetpu_slim_camvid

Writes src/edgeseg/zoo/trained/<name>.safetensors (float16) and prints its WeightsFile line for
src/edgeseg/zoo/registry.py. Measure the entry's figures on the written file, not on the checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.zoo.build import write_shipped_weights
from edgeseg.zoo.weights import sha256_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a run's best.safetensors")
    parser.add_argument("name", help="the zoo entry's name")
    args = parser.parse_args()
    path = write_shipped_weights(args.checkpoint, args.name)
    print(f'WeightsFile(filename="{path.name}", url="", sha256="{sha256_of(path)}",\n'
          f'            num_bytes={path.stat().st_size}, bundled=True)')


if __name__ == "__main__":
    main()
