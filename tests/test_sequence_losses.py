"""Token-wise losses on sequence outputs: each equals the class-label loss applied to the completion tokens alone,
reduced per token or per sequence; what has no meaning over a vocabulary is refused."""

import pytest
import torch
import torch.nn.functional as F

from rmlab import losses
from rmlab.errors import ConfigError
from rmlab.kinds import SEQUENCE, TEXT, TaskInfo
from rmlab.sequence import IGNORE_INDEX

SEQUENCE_INFO = TaskInfo(name="seq", output_kind=SEQUENCE, input_dim=0, input_type=TEXT)


def batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6))
    # Row 0: 4 completion tokens, row 1: 1, row 2: 2 (prompt and padding ignored).
    ignore = torch.tensor([[1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 1], [1, 1, 0, 0, 1, 1]], dtype=torch.bool)
    labels[ignore] = IGNORE_INDEX
    return logits, labels


LOSSES = [losses.CrossEntropy(), losses.CrossEntropy(label_smoothing=0.2), losses.Focal(gamma=2.0),
          losses.GCE(q=0.7), losses.SCE(alpha=0.1, beta=1.0), losses.NCERCE(alpha=1.0, beta=1.0)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: repr(loss))
def test_token_average_is_the_class_loss_over_completion_tokens(loss):
    logits, labels = batch()
    valid = labels != IGNORE_INDEX
    expected = loss(logits[valid], labels[valid])  # the logits form over the 7 completion tokens
    torch.testing.assert_close(loss(logits, labels), expected)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: repr(loss))
def test_sequence_average_weighs_every_completion_the_same(loss):
    logits, labels = batch()
    loss.average = "sequence"
    per_row = [loss(logits[b][labels[b] != IGNORE_INDEX], labels[b][labels[b] != IGNORE_INDEX]) for b in range(3)]
    torch.testing.assert_close(loss(logits, labels), torch.stack(per_row).mean())


def test_cross_entropy_matches_pytorch_and_gradients_skip_ignored_positions():
    logits, labels = batch()
    value = losses.CrossEntropy()(logits, labels)
    torch.testing.assert_close(value, F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                      ignore_index=IGNORE_INDEX))
    value.backward()
    assert (logits.grad[labels == IGNORE_INDEX] == 0).all() and (logits.grad[labels != IGNORE_INDEX] != 0).any()


def test_token_and_sequence_averages_differ_when_lengths_differ():
    logits, labels = batch()
    token, sequence = losses.CrossEntropy(average="token"), losses.CrossEntropy(average="sequence")
    assert not torch.allclose(token(logits, labels), sequence(logits, labels))
    # On class labels (one token per example) the two are the same.
    flat_logits, flat_labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(token(flat_logits, flat_labels), sequence(flat_logits, flat_labels))


def test_average_is_validated_and_class_weights_refused_on_sequences():
    with pytest.raises(ConfigError, match="cross_entropy: average must be one of token, sequence, got 'batch'"):
        losses.CrossEntropy(average="batch")
    with pytest.raises(ConfigError, match="gce: average must be one of token, sequence"):
        losses.GCE(average=None)
    with pytest.raises(ConfigError, match="cross_entropy: per-class weights do not apply to sequence tasks"):
        losses.CrossEntropy(class_weights=[1.0, 2.0]).check_task(SEQUENCE_INFO)
    with pytest.raises(ConfigError, match="focal: per-class weights do not apply to sequence tasks"):
        losses.Focal(alpha=[1.0, 2.0]).check_task(SEQUENCE_INFO)
    with pytest.raises(ConfigError, match="focal: per-class weights do not apply to sequence tasks"):
        losses.Focal(alpha=0.5).check_task(SEQUENCE_INFO)  # a binary task's class balance: no meaning either
    losses.Focal(gamma=1.0).check_task(SEQUENCE_INFO)


def test_which_losses_accept_sequences():
    accepting = {name for name in losses.__all__ if SEQUENCE in getattr(getattr(losses, name), "accepts", ())}
    assert accepting == {"CrossEntropy", "Focal", "GCE", "SCE", "NCERCE"}
