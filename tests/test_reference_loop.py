"""rmlab's chunked training against an independent plain PyTorch loop.

Same initial weights, same data order (one seeded permutation per epoch, then contiguous batches), same optimizer,
gradient clipping by norm before each step, a step LR schedule stepped once per epoch, and gradient accumulation
(a group's gradient is that of the mean loss over its samples). The per-step losses rmlab stored in MLflow, its final
weights and its test loss must equal the loop's: a scheduler stepped per batch, a wrong clip value, an accumulation
group that steps too early or weights its batches wrongly, or a batch order that differs all fail this test.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from rmlab.build import build_components
from rmlab.run import seed_all, train
from tests.conftest import compose_config

CLIP, GAMMA, EPOCHS, BATCH = 0.5, 0.5, 3, 16
OVERRIDES = ["task=wine", f"task.batch_size={BATCH}", "model.hidden_sizes=[32]", f"trainer.max_epochs={EPOCHS}",
             "trainer.enable_progress_bar=false", "trainer.checkpoint.enabled=false", "trainer.log_every_n_steps=1",
             f"trainer.gradient_clip_val={CLIP}", "trainer.steps_per_chunk=2", "optimizer.scheduler.name=step",
             "optimizer.scheduler.step_size=1", f"optimizer.scheduler.gamma={GAMMA}", "optimizer.lr=0.01"]


def plain_loop(model, x, y, seed: int, accumulate: int):
    """The hand-written loop: returns the loss of each optimizer step, and how many steps were clipped."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.999), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
    order = torch.Generator().manual_seed(seed)
    losses, clipped = [], 0
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=order)
        xs, ys = x[perm], y[perm]
        batches = [(xs[i:i + BATCH], ys[i:i + BATCH]) for i in range(0, len(xs), BATCH)]
        for first in range(0, len(batches), accumulate):
            group = batches[first:first + accumulate]
            samples = sum(len(yb) for _, yb in group)
            optimizer.zero_grad()
            step_loss = 0.0
            for xb, yb in group:
                loss = F.cross_entropy(model(xb), yb)
                (loss * (len(yb) / samples)).backward()
                step_loss += loss.item() * len(yb) / samples
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            clipped += int(norm > CLIP)
            optimizer.step()
            losses.append(step_loss)
        scheduler.step()
    return losses, clipped


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("path", ["direct", "lightning"])
def test_training_equals_a_plain_pytorch_loop(workdir, monkeypatch, accumulate, path):
    import rmlab.module

    captured = {}

    class Recording(rmlab.module.ObjectiveModule):
        def __init__(self, model, *args, **kwargs):
            captured["init"] = copy.deepcopy(model.state_dict())
            super().__init__(model, *args, **kwargs)
            captured["module"] = self

        def on_train_start(self):
            super().on_train_start()
            assert self.direct_steps  # one CPU device in fp32: the direct path, unless this test turns it off
            self.direct_steps = path == "direct"

    monkeypatch.setattr(rmlab.module, "ObjectiveModule", Recording)
    cfg = compose_config(*OVERRIDES, f"trainer.accumulate_grad_batches={accumulate}")
    results = train(cfg)

    seed_all(cfg.seed)
    parts = build_components(cfg)
    model = parts.model
    model.load_state_dict(captured["init"])
    data = parts.task.load()
    expected, clipped = plain_loop(model, data["train"].x, data["train"].y, cfg.seed, accumulate)

    batches = -(-len(data["train"].y) // BATCH)
    # The ragged ends are covered: a short last batch, and with accumulation a short last group.
    assert len(data["train"].y) % BATCH != 0 and (accumulate == 1 or batches % accumulate != 0)
    assert len(expected) == EPOCHS * -(-batches // accumulate)
    assert clipped > 0  # the clip value is active
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    history = sorted(client.get_metric_history(results["run_id"], "train/loss_step"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, len(expected) + 1))
    torch.testing.assert_close(torch.tensor([m.value for m in history]), torch.tensor(expected), rtol=1e-5,
                               atol=1e-6)
    trained = captured["module"].model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        test_loss = F.cross_entropy(model(data["test"].x), data["test"].y).item()
    assert results["test/loss"] == pytest.approx(test_loss, rel=1e-5)
