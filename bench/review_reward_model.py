"""How well a small text reward model learns the known gold reward of ``review_preference``, with and without the
prompt in its items.

A hand-written loop trains ``text_transformer`` (width 64, depth 2, Adam 1e-3, 32 pairs per step, Bradley-Terry
loss) on the task's train pairs, and prints one JSON line per evaluation: the validation loss and the Spearman
correlation of the item scores with the items' gold rewards, for ``with_prompt`` false and true on the same pairs.

    python bench/review_reward_model.py --steps 300 --max-clauses 1 --negation 0
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rmlab, whatever is installed

from rmlab.tasks import ReviewPreference  # noqa: E402
from rmlab.text_models import TextTransformer  # noqa: E402


def run(with_prompt: bool, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    task = ReviewPreference(n_pairs=args.pairs, max_clauses=args.max_clauses, negation=args.negation,
                            with_prompt=with_prompt, max_length=160)
    splits = task.load()
    width = int((splits["train"].x != 0).sum(-1).max())  # the longest item: no time spent on padding
    x, vx, vy = splits["train"].x[..., :width], splits["val"].x[..., :width], splits["val"].y
    net = TextTransformer(160, 1, width=64, depth=2, heads=4)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.randint(len(x), (32,))
        scores = net(x[rows].flatten(0, 1)).view(-1, 2)
        loss = F.softplus(scores[:, 1] - scores[:, 0]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                val = net(vx.flatten(0, 1)).view(-1, 2)
            print(json.dumps({"with_prompt": with_prompt, "step": step,
                              "val_loss": round(F.softplus(val[:, 1] - val[:, 0]).mean().item(), 4),
                              "spearman": round(float(spearmanr(val.flatten(), vy.flatten()).statistic), 4),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--max-clauses", type=int, default=1)
    parser.add_argument("--negation", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for with_prompt in (False, True):
        run(with_prompt, args)


if __name__ == "__main__":
    main()
