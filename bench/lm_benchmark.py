"""Language models: rmlab's training throughput against a hand-written loop, and generation with the KV cache against
generation without it.

Prints one JSON object per line:
- ``lm_training``: training tokens/s of rmlab (``rmlab.run.train``, what ``python -m rmlab`` calls, MLflow tracking on,
  into a temporary store) and of a hand-written PyTorch loop doing the same training: the same model (causal_lm,
  same init), the same tokenised data, the same batches (a seeded permutation, each batch cut to its longest row),
  the same optimizer, loss and epochs, and the same final validation (teacher-forced loss and greedy generation of
  the validation split). Tokens are the real (non-pad) tokens trained on; each side's time is its whole fit.
  ``--accelerator``/``--precision`` run both sides on a GPU and under ``bf16-mixed`` (autocast) or ``bf16-true``.
  ``ratio`` = rmlab / loop, the median over ``--pairs`` alternating pairs. Goal: >= 0.9.
- ``lm_generation`` (one line per model): greedy generation of ``--new-tokens`` tokens for a batch of prompts, with the
  KV cache and without (the whole sequence recomputed at every step): ``speedup`` = time without / time with,
  median over ``--repeats``. Goal: >= 3 at 64 new tokens.

The task is the tiny reversal task of the test suite (``tests/conf/task/tiny_reverse.yaml``), sized up here.

    python bench/lm_benchmark.py --threads 1         # about 5 minutes on 2 cores
    python bench/lm_benchmark.py --only generation
    python bench/lm_benchmark.py --only training --accelerator gpu --precision bf16-mixed   # on a GPU machine
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rmlab.composed import compose  # noqa: E402  (this checkout's rmlab)

TRAINING = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "task=tiny_reverse", "reward=tiny_exact_match",
            "task.n_examples=2000", "task.min_length=8", "task.max_length=24", "task.alphabet=abcdefghijklmnop",
            "task.batch_size=32", "model=causal_lm", "model.width=128", "model.depth=2", "model.max_length=64",
            "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=3", "generation.max_new_tokens=32",
            "trainer.enable_progress_bar=false"]


def raw_loop(cfg) -> float:
    """The hand-written loop (see the module docstring). Training tokens/s."""
    from contextlib import nullcontext

    import torch

    from rmlab.build import build_components
    from rmlab.generation import generate
    from rmlab.optim import build_optimizer
    from rmlab.run import seed_all

    seed_all(cfg.seed)
    parts = build_components(cfg)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    precision = str(cfg.trainer.precision)
    # What Lightning's precision plugins do: autocast for *-mixed, the model's own dtype for bf16-true.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    train, val = parts.splits["train"].to(device), parts.splits["val"].to(device)
    model, loss_fn, batch = parts.model.to(device), parts.loss.to(device), parts.task.batch_size
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    optimizer = build_optimizer(model.parameters(), dict(cfg.optimizer), cfg.trainer.max_epochs)["optimizer"]
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens = 0
    started = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        lengths = train.lengths[perm]
        ids, labels = train.ids[perm.to(device)], train.labels[perm.to(device)]
        for i in range(0, len(train), batch):
            width = int(lengths[i:i + batch].max())
            with autocast:
                loss = loss_fn(model(ids[i:i + batch, :width]), labels[i:i + batch, :width])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        tokens += int(lengths.sum())
    model.eval()
    with torch.no_grad(), autocast:
        size = parts.generation.batch_size
        for i in range(0, len(val), size):
            width = int(val.lengths[i:i + size].max())
            loss_fn(model(val.ids[i:i + size, :width]), val.labels[i:i + size, :width]).item()
            prompt = int(val.prompt_lengths[i:i + size].max())
            generate(model, val.prompt_ids[i:i + size, -prompt:], val.prompt_mask[i:i + size, -prompt:],
                     max_new_tokens=parts.generation.max_new_tokens)
    return tokens / (time.perf_counter() - started)


def rmlab_run(cfg, store: Path) -> float:
    from rmlab.run import train

    cfg.logger.tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    return train(cfg)["perf_train_tokens_per_s"]


def training_case(pairs: int, device_overrides: list[str]) -> dict:
    import torch

    overrides = TRAINING + device_overrides
    raw, ours = [], []
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder)
        rmlab_run(compose(overrides), store)  # warm-up: imports, the store's schema, first-call kernels
        for _ in range(pairs):
            raw.append(raw_loop(compose(overrides)))
            ours.append(rmlab_run(compose(overrides), store))
    ratios = [o / r for o, r in zip(ours, raw)]
    return {"case": "lm_training", "raw_tokens_per_s": round(statistics.median(raw)),
            "rmlab_tokens_per_s": round(statistics.median(ours)), "ratio": round(statistics.median(ratios), 3),
            "pairs": pairs, "threads": torch.get_num_threads(), "device_overrides": device_overrides}


def generation_case(name: str, model, new_tokens: int, batch: int, prompt: int, repeats: int) -> dict:
    import torch

    from rmlab.generation import generate

    torch.manual_seed(0)
    ids = torch.randint(4, 260, (batch, prompt))
    mask = torch.ones(batch, prompt, dtype=torch.bool)
    model.eval()
    times = {True: [], False: []}
    steps = {}
    generate(model, ids, mask, max_new_tokens=4)  # warm-up
    for _ in range(repeats):
        for cached in (True, False):
            started = time.perf_counter()
            out = generate(model, ids, mask, max_new_tokens=new_tokens, use_cache=cached)
            times[cached].append(time.perf_counter() - started)
            steps[cached] = out.ids.shape[1]
    with_cache, without = statistics.median(times[True]), statistics.median(times[False])
    return {"case": "lm_generation", "model": name, "batch": batch, "prompt_tokens": prompt,
            "new_tokens": steps[True], "with_cache_s": round(with_cache, 4), "without_cache_s": round(without, 4),
            "speedup": round(without / with_cache, 2), "repeats": repeats}


def generation_cases(new_tokens: int, batch: int, prompt: int, repeats: int) -> list[dict]:
    import torch

    from rmlab.language_models import CausalLM

    torch.manual_seed(0)
    rows = [generation_case("causal_lm", CausalLM(width=128, depth=2, heads=4, max_length=256), new_tokens, batch,
                            prompt, repeats)]
    try:
        from rmlab.language_models.hf import HFCausalLM

        torch.manual_seed(0)
        gpt2 = HFCausalLM(config="gpt2", width=128, depth=2, heads=4, max_length=256)
        rows.append(generation_case("hf_causal_lm (gpt2 config)", gpt2, new_tokens, batch, prompt, repeats))
    except Exception as err:  # transformers not installed: the causal_lm line still stands
        print(json.dumps({"case": "lm_generation", "model": "hf_causal_lm", "skipped": str(err)}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("training", "generation"))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu", help="training case: cpu or gpu")
    parser.add_argument("--precision", default="32-true", help="training case: 32-true, bf16-mixed, bf16-true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.only in (None, "generation"):
        for row in generation_cases(args.new_tokens, args.batch, args.prompt, args.repeats):
            print(json.dumps(row), flush=True)
    if args.only in (None, "training"):
        device = [f"trainer.accelerator={args.accelerator}", f"trainer.precision={args.precision}"]
        print(json.dumps(training_case(args.pairs, device)), flush=True)


if __name__ == "__main__":
    main()
