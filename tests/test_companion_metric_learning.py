"""Metric learning: losses vs hand-worked numbers, mining, retrieval and precision@k (book/12)."""
import math

import pytest
import torch

from wsbus.companion import (EmbeddingNet, all_pairs, batch_all_triplets, batch_hard_triplets, contrastive_loss,
                             extract_features, mine_pairs, mine_triplets, precision_at_k, retrieve, train_embedding,
                             triplet_loss)

torch.set_num_threads(1)


def test_contrastive_loss_hand_worked():
    # The seed's example: a dissimilar pair at distance 0.5 with m = 1 costs (1/2) * (1 - 0.5)^2 = 0.125
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.3, 0.4]])  # distance 0.5
    assert contrastive_loss(a, b, [0], margin=1.0).item() == pytest.approx(0.125)
    # ... and at distance 1.5 nothing
    assert contrastive_loss(a, torch.tensor([[0.9, 1.2]]), [0], margin=1.0).item() == 0.0
    # a similar pair at distance 0.5 costs (1/2) * 0.5^2 = 0.125
    assert contrastive_loss(a, b, [1]).item() == pytest.approx(0.125)
    # batch of three: mean over pairs with the 1/(2N) factor: (0.25 + 0.25 + 0) / 6
    ea = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    eb = torch.tensor([[0.3, 0.4], [0.3, 0.4], [1.0, 1.0]])
    assert contrastive_loss(ea, eb, torch.tensor([True, False, True])).item() == pytest.approx(0.5 / 6)


def test_contrastive_loss_gradient_is_finite_for_identical_embeddings():
    a = torch.zeros(2, 3, requires_grad=True)
    loss = contrastive_loss(a, torch.zeros(2, 3), [0, 1])
    loss.backward()
    assert loss.item() == pytest.approx(0.25)  # one dissimilar pair at distance 0: (1/4) * 1^2
    assert torch.isfinite(a.grad).all()


def test_triplet_loss_hand_worked():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [0.0, 1.0]])     # d(a, p) = 5, 1
    n = torch.tensor([[0.0, 5.1], [0.0, 3.0]])     # d(a, n) = 5.1, 3
    # max(0, 5 - 5.1 + 0.2) = 0.1; max(0, 1 - 3 + 0.2) = 0 -> mean 0.05
    assert triplet_loss(a, p, n, margin=0.2).item() == pytest.approx(0.05, abs=1e-5)


def test_all_pairs_and_random_mining():
    y = torch.tensor([1, 1, 2, 2, 2])
    i, j, same = all_pairs(y)
    assert len(i) == 10 and bool((i < j).all())
    assert int(same.sum()) == 1 + 3
    g = torch.Generator().manual_seed(0)
    i, j, same = mine_pairs(y, 20, g)
    assert int(same.sum()) == 10 and bool((i != j).all())
    torch.testing.assert_close(same, y[i] == y[j])
    with pytest.raises(ValueError, match="both positive and negative"):
        mine_pairs(torch.tensor([1, 2, 3]), 4)
    a, p, n = mine_triplets(y, 50, g)
    assert bool((y[a] == y[p]).all()) and bool((a != p).all()) and bool((y[a] != y[n]).all())


def test_batch_all_triplets_counts_every_valid_triplet():
    y = torch.tensor([1, 1, 1, 2, 2])
    a, p, n = batch_all_triplets(y)
    # class 1 anchors: 3 anchors x 2 positives x 2 negatives; class 2: 2 x 1 x 3
    assert len(a) == 12 + 6
    assert bool((y[a] == y[p]).all()) and bool((a != p).all()) and bool((y[a] != y[n]).all())
    assert len(set(zip(a.tolist(), p.tolist(), n.tolist()))) == len(a)


def test_batch_hard_picks_farthest_positive_and_closest_negative():
    e = torch.tensor([[0.0], [1.0], [3.0], [10.0], [2.5]])
    y = torch.tensor([1, 1, 1, 2, 2])
    a, p, n = batch_hard_triplets(e, y)
    got = dict(zip(a.tolist(), zip(p.tolist(), n.tolist())))
    assert got[0] == (2, 4)   # positives at 1, 3 -> farthest 3 (idx 2); negatives 10, 2.5 -> closest idx 4
    assert got[1] == (2, 4)   # from 1: positives 0 (d=1), 3 (d=2) -> idx 2; negatives 10 (9), 2.5 (1.5) -> idx 4
    assert got[3] == (4, 2)   # from 10: positive 2.5 only; closest negative 3 (idx 2)
    assert got[4] == (3, 2)   # from 2.5: positive 10; closest negative 3 (d=0.5)


def test_retrieve_and_precision_at_k_constructed_example():
    gallery = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [6.0, 5.0], [0.0, 1.0]])
    g_lab = torch.tensor([1, 1, 2, 2, 2])
    query = torch.tensor([[0.1, 0.0], [5.5, 5.2]])
    q_lab = torch.tensor([1, 2])
    idx, dist = retrieve(query, gallery, k=3)
    # query 1 is equidistant from gallery 2 and 3 (tie -> lower index first); then gallery 1 (6.88) before 4 (6.92)
    assert idx.tolist() == [[0, 1, 4], [2, 3, 1]]
    torch.testing.assert_close(dist[0], torch.tensor([0.1, 0.9, math.hypot(0.1, 1.0)]))
    # retrieved labels: query 0 (label 1) -> 1, 1, 2; query 1 (label 2) -> 2, 2, 1
    assert precision_at_k(q_lab, g_lab, idx, k=1) == 1.0
    per_q = precision_at_k(q_lab, g_lab, idx, k=2, per_query=True)
    assert per_q.tolist() == [1.0, 1.0]
    assert precision_at_k(q_lab, g_lab, idx, k=3, per_query=True).tolist() == pytest.approx([2 / 3, 2 / 3])
    assert precision_at_k(q_lab, g_lab, idx) == pytest.approx(2 / 3)


def test_retrieve_ties_exclude_self_and_errors():
    e = torch.tensor([[0.0], [1.0], [1.0], [-1.0]])
    idx, _ = retrieve(e, e, k=3, exclude_self=True)
    assert idx[0].tolist() == [1, 2, 3]  # ties (1, 2, 3 all at distance 1) broken by the lower index
    assert 0 not in idx[0].tolist() and 1 not in idx[1].tolist()
    assert idx[1].tolist()[0] == 2  # its duplicate, distance 0
    idx_c, d_c = retrieve(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [3.0, 0.1]]), k=1, metric="cosine")
    assert idx_c.item() == 1
    with pytest.raises(ValueError, match="k must be"):
        retrieve(e, e, k=4, exclude_self=True)
    with pytest.raises(ValueError, match="share D"):
        retrieve(e, torch.zeros(3, 2), k=1)
    with pytest.raises(ValueError, match="outside the gallery"):
        precision_at_k([1], [1, 2], torch.tensor([[5]]))


def test_triplet_training_separates_two_kinds_of_crops():
    # bright square vs bright disc on noise: shape is the only difference
    g = torch.Generator().manual_seed(0)
    n, s = 40, 24
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    x = torch.rand(n, 1, s, s, generator=g) * 0.3
    y = torch.tensor([1, 2] * (n // 2))
    for i in range(n):
        c = (torch.randint(7, s - 7, (2,), generator=g)).tolist()
        if y[i] == 1:
            x[i, 0, c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5] = 0.9
        else:
            x[i, 0][((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < 16] = 0.9
    torch.manual_seed(0)
    net = EmbeddingNet(embedding_dim=8)
    torch.manual_seed(0)
    untrained = EmbeddingNet(embedding_dim=8)
    hist = train_embedding(net, x[:30], y[:30], loss="triplet", steps=60, batch_size=16, lr=3e-3, augment=False,
                           progress=False)
    assert sum(hist[-5:]) < sum(hist[:5])
    e = extract_features(net, x)
    assert torch.allclose(e.norm(dim=1), torch.ones(n), atol=1e-5)  # unit embeddings
    idx, _ = retrieve(e[30:], e[:30], k=5)
    idx0, _ = retrieve(extract_features(untrained, x[30:]), extract_features(untrained, x[:30]), k=5)
    p_trained, p_untrained = precision_at_k(y[30:], y[:30], idx), precision_at_k(y[30:], y[:30], idx0)
    assert p_trained >= 0.8 and p_trained > p_untrained
    with pytest.raises(ValueError, match="not available"):
        train_embedding(net, x, y, loss="contrastive", mining="batch_hard", steps=1, progress=False)
