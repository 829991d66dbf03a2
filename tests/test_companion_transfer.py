"""Transfer learning: linear heads vs an independent scipy fit, MMD, cross-domain matrix, transfer study (book/13)."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from wsbus.companion import (Domain, build_classifier, cross_domain_matrix, domain_from_samples, fit_linear_head, mmd2,
                             train_classifier, transfer_study)

torch.set_num_threads(1)


def _features(seed=0, n=60, d=5):
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = g.normal(size=(n, d)) * np.array([1.0, 3.0, 0.5, 2.0, 1.0]) + 1.5 * np.eye(3, d)[y] + 4.0
    return x, y


def _scipy_fit(x, y, kind, l2, C=3):
    xs = (x - x.mean(0)) / x.std(0)
    n, d = xs.shape

    def objective(theta):
        W, b = theta[: C * d].reshape(C, d), theta[C * d:]
        s = xs @ W.T + b
        if kind == "logistic":
            data = np.mean(logsumexp(s, axis=1) - s[np.arange(n), y])
        else:  # Weston-Watkins squared hinge, averaged over the C classes as nn.MultiMarginLoss does
            h = np.maximum(0.0, 1.0 - s[np.arange(n), y][:, None] + s)
            h[np.arange(n), y] = 0.0
            data = np.mean((h ** 2).sum(1) / C)
        return data + 0.5 * l2 * np.sum(W ** 2)

    res = minimize(objective, np.zeros(C * d + C), method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10,
                                                                                "ftol": 1e-15})
    return res.x[: C * d].reshape(C, d), res.x[C * d:], objective


@pytest.mark.parametrize("kind", ["logistic", "svm"])
def test_linear_head_matches_an_independent_scipy_fit(kind):
    x, y = _features()
    l2 = 0.05
    head = fit_linear_head(torch.tensor(x, dtype=torch.float32), torch.tensor(y), kind=kind, l2=l2)
    W_ref, b_ref, objective = _scipy_fit(x, y, kind, l2)
    W = head.linear.weight.detach().double().numpy()
    b = head.linear.bias.detach().double().numpy()
    # the objective is strictly convex in W; the bias is unpenalised and only defined up to a common shift
    np.testing.assert_allclose(W, W_ref, atol=2e-3)
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), atol=2e-3)
    assert objective(np.concatenate([W.ravel(), b])) == pytest.approx(objective(np.concatenate([W_ref.ravel(), b_ref])),
                                                                      abs=1e-6)
    p = head.predict_proba(torch.tensor(x, dtype=torch.float32))
    torch.testing.assert_close(p.sum(1), torch.ones(len(x)))
    np.testing.assert_allclose(head.mean.numpy(), x.mean(0), rtol=1e-5)


def test_linear_head_errors():
    with pytest.raises(ValueError, match="kind"):
        fit_linear_head(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]), kind="tree")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        fit_linear_head(torch.rand(4, 2), torch.tensor([0, 1, 2, 1]), num_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_head(torch.tensor([[float("nan"), 0.0]] * 2), torch.tensor([0, 1]), num_classes=2)


def test_mmd2_against_a_loop_and_its_behaviour():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 2, generator=g), torch.randn(5, 2, generator=g) + 1.0
    h = 1.3

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert mmd2(x, y, bandwidth=h) == pytest.approx(kxx + kyy - 2 * kxy, abs=1e-7)  # the loop sums float32
    same = mmd2(torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g))
    shifted = mmd2(torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g) + 1.0)
    assert abs(same) < 0.02 and shifted > 0.1
    with pytest.raises(ValueError, match="same D"):
        mmd2(torch.rand(3, 2), torch.rand(3, 4))


def _domain(shift, n=48, size=16, seed=0):
    """Class = brightness of a central square; ``shift`` darkens the whole image (another 'scanner')."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, size, size, generator=g) * 0.2 + shift
    x[:, 0, 4:12, 4:12] += (0.3 * y).view(-1, 1, 1)
    x = x.clamp(0, 1)
    return Domain(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:])


def test_cross_domain_matrix_layout():
    domains = {"A": _domain(0.0), "B": _domain(0.5, seed=1)}
    mat = cross_domain_matrix(domains, steps=30, batch_size=12, lr=3e-3, augment=False, progress=False)
    assert mat.names == ["A", "B"] and set(mat.models) == {"A", "B"}
    acc = mat.values["accuracy"]
    assert acc.shape == (2, 2) and np.all((acc >= 0) & (acc <= 1))
    # each entry is the row's model evaluated on the column's test split
    from wsbus.companion import classification_metrics, predict_scores
    ref = classification_metrics(domains["B"].test_labels, predict_scores(mat.models["A"], domains["B"].test_images))
    assert acc[0, 1] == pytest.approx(ref.accuracy)
    assert mat.in_domain().tolist() == [acc[0, 0], acc[1, 1]]
    assert sorted(mat.off_domain().tolist()) == sorted([acc[0, 1], acc[1, 0]])
    assert "| train \\ test | A | B |" in mat.to_markdown()
    with pytest.raises(ValueError, match="at least two domains"):
        cross_domain_matrix({"A": domains["A"]}, progress=False)


def test_transfer_study_methods():
    src, tgt = _domain(0.0), _domain(0.4, n=24, seed=2)
    model = build_classifier("tiny")
    train_classifier(model, src.train_images, src.train_labels, steps=20, batch_size=12, augment=False,
                     progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    st = transfer_study(model, tgt, steps=5, batch_size=6, augment=False, progress=False)
    assert [r["method"] for r in st.rows] == ["source_only", "scratch", "logistic_probe", "svm_probe", "fine_tune"]
    for k, v in model.state_dict().items():  # the source model is never modified
        assert torch.equal(v, before[k]), k
    assert 0.0 <= st.get("svm_probe") <= 1.0
    with pytest.raises(KeyError):
        st.get("magic")
    with pytest.raises(ValueError, match="unknown methods"):
        transfer_study(model, tgt, methods=("magic",), progress=False)


def test_domain_from_samples_splits_by_patient_then_crops():
    from wsbus.companion import load_samples, region_crops, stratified_split
    samples = load_samples("phantom", n=24, seed=4, size=64, scanner="C")
    d = domain_from_samples(samples, size=16, test_fraction=0.3, seed=0)
    tr, te = stratified_split(samples, test_fraction=0.3, seed=0)
    ref = region_crops([samples[i] for i in te.tolist()], size=16, normals_per_image=2, seed=1)
    torch.testing.assert_close(d.test_images, ref.images)
    assert torch.equal(d.test_labels, ref.labels)
    assert len(d.train_labels) == len(region_crops([samples[i] for i in tr.tolist()], size=16, normals_per_image=2))
