"""Sequential models: the sequence buffers, what each position predicts, causality, masking, and the losses the
training module puts on them. The shared contract test covers shapes, determinism and learning."""

from __future__ import annotations

import pytest
import torch

from recforge.losses import BCELoss, SampledSoftmaxLoss, SoftmaxLoss
from recforge.samplers import NegativeSampler
from recforge.models.bert4rec import BERT4Rec
from recforge.models.caser import Caser
from recforge.models.gru4rec import GRU4Rec
from recforge.models.sasrec import SASRec
from recforge.training.module import RecommenderModule

# user 0: 3 -> 1 -> 4 (in time), user 1: nothing, user 2: 0 -> 2 -> 3 -> 1 -> 4 -> 0
SEQUENCES = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 2], [3, 1, 4, 0, 2, 3, 1, 4, 0]])
PAD = 5


def test_recent_items_are_the_latest_in_time_order_left_padded():
    model = SASRec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4)
    assert model.recent_items(torch.tensor([0, 1, 2]), 4).tolist() == [[PAD, 3, 1, 4], [PAD] * 4, [3, 1, 4, 0]]
    assert model.recent_items(torch.tensor([2]), 1).tolist() == [[0]]


def test_training_sequences_predict_the_next_item_where_there_is_an_input():
    model = SASRec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4)
    owners, inputs, targets = model.training_sequences(torch.tensor([0, 2]))
    assert owners.tolist() == [0, 2]
    assert inputs.tolist() == [[PAD, PAD, 3, 1], [2, 3, 1, 4]]
    assert targets.tolist() == [[-1, -1, 1, 4], [3, 1, 4, 0]]


def test_training_on_all_cuts_the_history_into_windows_that_predict_each_item_once():
    # user 2's six items with max_len 2: windows of three items ending at the latest, two and four items back;
    # user 0's three fit one window, user 1 has none
    model = GRU4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=2, train_on="all")
    owners, inputs, targets = model.training_sequences(torch.tensor([0, 1, 2]))
    assert owners.tolist() == [0, 1, 2, 2, 2]
    assert inputs.tolist() == [[3, 1], [PAD, PAD], [1, 4], [2, 3], [PAD, 0]]
    assert targets.tolist() == [[1, 4], [-1, -1], [4, 0], [3, 1], [-1, 2]]
    # every item after a user's first is a target exactly once
    for user, history in ((0, [3, 1, 4]), (2, [0, 2, 3, 1, 4, 0])):
        predicted = targets[owners == user][targets[owners == user] >= 0]
        assert sorted(predicted.tolist()) == sorted(history[1:])
    # the default reads only the latest window, as before
    latest = GRU4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=2)
    assert latest.training_sequences(torch.tensor([0, 1, 2]))[0].tolist() == [0, 1, 2]
    # BERT4Rec masks items of windows that do not overlap
    bert = BERT4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4, train_on="all")
    owners, _, _ = bert.training_sequences(torch.tensor([2]))
    assert owners.tolist() == [2, 2]
    assert bert.training_windows(torch.tensor([2]), 4, step=4)[1].tolist() == [[3, 1, 4, 0], [PAD, PAD, 0, 2]]


def test_an_unknown_train_on_names_the_choices():
    with pytest.raises(ValueError, match="train_on must be one of latest, all, got 'every'"):
        SASRec(n_users=3, n_items=5, sequences=SEQUENCES, train_on="every")


def test_set_histories_changes_what_the_model_reads():
    model = SASRec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    before = model.score_all(torch.tensor([0]))
    model.set_histories(torch.tensor([0, 4, 4, 4]), torch.tensor([3, 1, 4, 2]))  # user 0 then consumed item 2
    assert model.recent_items(torch.tensor([0]), 4).tolist() == [[3, 1, 4, 2]]
    assert not torch.allclose(model.score_all(torch.tensor([0])), before)


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec, Caser])
def test_causal_models_never_look_ahead(cls):
    torch.manual_seed(0)
    model = cls(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
    users = torch.tensor([0])
    a = model.encode(torch.tensor([[3, 1, 4, 0]]), users)
    b = model.encode(torch.tensor([[3, 1, 4, 2]]), users)  # only the last item differs
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_short_histories_give_finite_scores():
    for cls in (SASRec, GRU4Rec, Caser, BERT4Rec):
        model = cls(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4).eval()
        assert torch.isfinite(model.score_all(torch.tensor([0, 1, 2]))).all(), cls.__name__


def test_bert4rec_is_bidirectional_and_masks_what_it_predicts():
    torch.manual_seed(0)
    model = BERT4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4, mask_prob=0.5).eval()
    a = model.encode(torch.tensor([[3, 1, 4, 0]]), torch.tensor([0]))
    b = model.encode(torch.tensor([[3, 1, 4, 2]]), torch.tensor([0]))
    assert not torch.allclose(a[:, 0], b[:, 0])  # the first position sees the last
    torch.manual_seed(1)
    _, inputs, targets = model.training_sequences(torch.tensor([0, 2] * 50))
    seq = model.recent_items(torch.tensor([0, 2] * 50), 4)
    masked = targets >= 0
    assert masked.any(dim=1).all()  # every sequence predicts at least one item
    assert (inputs[masked] == model.mask_idx).all() and torch.equal(targets[masked], seq[masked])
    assert torch.equal(inputs[~masked], seq[~masked])
    assert not masked[seq == PAD].any()  # padding is never a target
    assert 0.35 < masked[seq != PAD].float().mean() < 0.65
    # recommending reads the latest max_len - 1 items and a [mask] after them
    model.score_all(torch.tensor([2]))


def test_caser_reads_only_its_window():
    torch.manual_seed(0)
    model = Caser(n_users=3, n_items=5, sequences=SEQUENCES, max_len=6, window=2).eval()
    a = model.encode(torch.tensor([[3, 1, 4, 0]]), torch.tensor([0]))
    b = model.encode(torch.tensor([[2, 1, 4, 0]]), torch.tensor([0]))  # differs 3 positions before the end
    torch.testing.assert_close(a[:, 2:], b[:, 2:])
    assert model.context_length == 2


def test_sequence_losses_equal_hand_computation():
    torch.manual_seed(0)
    model = GRU4Rec(n_users=3, n_items=8, sequences=SEQUENCES, max_len=4, dropout=0.0)
    users = torch.tensor([0, 2])
    _, inputs, targets = model.training_sequences(users)
    hidden = model.encode(inputs, users)
    logits = hidden @ model.item_embedding.weight[:8].T
    at = targets >= 0
    expected = torch.nn.functional.cross_entropy(logits[at], targets[at])
    module = RecommenderModule(model, SoftmaxLoss())
    torch.testing.assert_close(module.compute_loss((users, users, torch.ones(2))), expected)

    # sampled losses score each target against negatives that avoid the position's user's training items
    keys = torch.sort(SEQUENCES[0] * 8 + SEQUENCES[1]).values
    for loss in (BCELoss(num_negatives=2), SampledSoftmaxLoss(num_negatives=2)):
        module = RecommenderModule(model, loss, sampler=NegativeSampler(8, keys, retries=20))
        torch.manual_seed(3)
        value = module.compute_loss((users, users, torch.ones(2)))
        torch.manual_seed(3)
        owners = users.unsqueeze(1).expand_as(at)[at]
        negatives = module.sampler(owners, 2)
        assert not module.sampler.is_positive(owners, negatives).any()
        scores = torch.cat([logits[at].gather(1, targets[at].unsqueeze(1)), logits[at].gather(1, negatives)], 1)
        torch.testing.assert_close(value, loss(scores[:, 0], scores[:, 1:]))


def test_sampled_softmax_is_cross_entropy_over_positive_and_negatives():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = -torch.tensor([2 - torch.log(torch.exp(torch.tensor(2.0)) + torch.e + 1), -torch.log(torch.tensor(3.0))])
    torch.testing.assert_close(SampledSoftmaxLoss(num_negatives=2)(pos, neg), expected.mean())


def test_sasrec_ignores_padding_and_softmax_accepts_a_model_files_negatives():
    torch.manual_seed(0)
    model = SASRec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4, n_heads=2, embedding_dim=8).eval()
    padded = model.encode(torch.tensor([[PAD, PAD, 3, 1]]), torch.tensor([0]))
    unpadded = model.encode(torch.tensor([[3, 1]]), torch.tensor([0]))  # same positions, no padding at all
    torch.testing.assert_close(padded[:, 2:], unpadded)
    assert SoftmaxLoss(num_negatives=1).num_negatives == 0


def test_gru4rec_reads_leading_padding_as_nothing():
    torch.manual_seed(0)
    model = GRU4Rec(n_users=3, n_items=5, sequences=SEQUENCES, max_len=4, n_layers=2).eval()
    padded = model.encode(torch.tensor([[PAD, PAD, 3, 1]]), torch.tensor([0]))
    torch.testing.assert_close(padded[:, 2:], model.encode(torch.tensor([[3, 1]]), torch.tensor([0])))


def test_a_batch_with_nothing_to_predict_has_a_zero_loss():
    model = GRU4Rec(n_users=3, n_items=5, sequences=torch.tensor([[0, 2], [1, 3]]), max_len=4)
    loss = RecommenderModule(model, SoftmaxLoss()).compute_loss((torch.tensor([0, 2]),) * 2 + (torch.ones(2),))
    assert loss.item() == 0 and loss.requires_grad
