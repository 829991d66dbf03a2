"""Autoencoder / VAE: ELBO terms against torch.distributions, learning, encoder transfer (book/10)."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from wsbus.companion import (ConvAutoencoder, ConvVAE, classifier_from_encoder, elbo, gaussian_kl,
                             label_budget_study, pretrain_autoencoder, reparameterize, train_classifier)

torch.set_num_threads(1)


def _blobs(n=48, size=32, seed=0):
    """Dark discs of random position and radius on a bright background: easy structure to reconstruct."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.full((n, 1, size, size), 0.8)
    for i in range(n):
        cx, cy = (torch.rand(2, generator=g) * size * 0.6 + size * 0.2).tolist()
        r = float(torch.rand(1, generator=g)) * size * 0.15 + size * 0.1
        out[i, 0][(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 0.2
    return out


def test_gaussian_kl_hand_worked():
    # mu = 1, sigma = 1 in one dimension: KL = 0.5 * (1 + 1 - 1 - 0) = 0.5
    assert gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[0.0]])).item() == pytest.approx(0.5)
    # mu = 0, sigma^2 = e: 0.5 * (0 + e - 1 - 1)
    assert gaussian_kl(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item() == pytest.approx(0.5 * (math.e - 2))
    # the prior itself: 0
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max().item() == 0.0


def test_elbo_terms_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=g)
    logits = torch.randn(4, 1, 8, 8, generator=g)
    mu, logvar = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g) * 0.5
    sigma = 0.3
    t = elbo(x, logits, mu, logvar, likelihood="gaussian", sigma=sigma)
    ref_rec = -Normal(torch.sigmoid(logits), sigma).log_prob(x).flatten(1).sum(1).mean()
    ref_kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(t.reconstruction, ref_rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(t.kl, ref_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.elbo, -(ref_rec + ref_kl), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(t.loss(beta=0.5), ref_rec + 0.5 * ref_kl, rtol=1e-5, atol=1e-4)

    xb = (x > 0.5).float()  # Bernoulli likelihood on binary pixels
    tb = elbo(xb, logits, mu, logvar, likelihood="bernoulli")
    ref_b = -Bernoulli(logits=logits).log_prob(xb).flatten(1).sum(1).mean()
    torch.testing.assert_close(tb.reconstruction, ref_b, rtol=1e-5, atol=1e-4)


def test_elbo_rejects_bad_arguments():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        elbo(x, torch.zeros(2, 1, 4, 4), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="likelihood"):
        elbo(x, torch.zeros_like(x), torch.zeros(2, 3), torch.zeros(2, 3), likelihood="laplace")
    with pytest.raises(ValueError, match="sigma"):
        elbo(x, torch.zeros_like(x), torch.zeros(2, 3), torch.zeros(2, 3), sigma=0.0)


def test_reparameterize_moments_and_gradient():
    mu = torch.tensor([2.0, -1.0], requires_grad=True)
    logvar = torch.log(torch.tensor([0.25, 4.0])).requires_grad_(True)
    z = reparameterize(mu.expand(20000, 2), logvar.expand(20000, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([2.0, -1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)
    z.sum().backward()  # the noise is an input: gradients reach mu and logvar
    torch.testing.assert_close(mu.grad, torch.full((2,), 20000.0))
    assert logvar.grad.abs().min() > 0


def test_autoencoder_learns_and_vae_elbo_improves():
    x = _blobs(48, 32)
    ae = ConvAutoencoder(image_size=32, latent_dim=16)
    h = pretrain_autoencoder(ae, x, steps=80, batch_size=16, lr=3e-3, progress=False, seed=0)
    assert set(h) == {"loss", "reconstruction"} and len(h["loss"]) == 80
    first, last = sum(h["loss"][:5]) / 5, sum(h["loss"][-5:]) / 5
    assert last < 0.5 * first, (first, last)  # 0.28-0.32 of it on the CPUs seen (kernels differ)
    # the trained model reconstructs better than an untrained one on the same images
    fresh = ConvAutoencoder(image_size=32, latent_dim=16)
    with torch.no_grad():
        assert ae.loss(x)["loss"] < 0.5 * fresh.loss(x)["loss"]

    vae = ConvVAE(image_size=32, latent_dim=8)
    hv = pretrain_autoencoder(vae, x, steps=60, batch_size=16, lr=3e-3, progress=False, seed=0)
    assert set(hv) == {"loss", "reconstruction", "kl"}
    assert sum(hv["loss"][-5:]) < sum(hv["loss"][:5])
    assert all(k >= 0 for k in hv["kl"])
    assert vae.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 32, 32)


def test_pretraining_is_seeded_and_leaves_global_rng_alone():
    x = _blobs(16, 16)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        m = ConvVAE(image_size=16, latent_dim=4)
        state = torch.get_rng_state()
        runs.append(pretrain_autoencoder(m, x, steps=5, batch_size=8, progress=False, seed=3)["loss"])
        assert torch.equal(torch.get_rng_state(), state)
    assert runs[0] == runs[1]


def test_encoder_weights_transfer_to_classifier():
    x = _blobs(24, 32)
    for ae in (ConvAutoencoder(image_size=32, latent_dim=8), ConvVAE(image_size=32, latent_dim=8)):
        pretrain_autoencoder(ae, x, steps=3, batch_size=8, progress=False)
        bottleneck = ae.to_latent if isinstance(ae, ConvAutoencoder) else ae.to_mu
        before = {**{f"trunk.{k}": v.clone() for k, v in ae.encoder.state_dict().items()},
                  **{f"latent.{k}": v.clone() for k, v in bottleneck.state_dict().items()}}
        clf = classifier_from_encoder(ae, num_classes=3)
        assert clf.feature_dim == 8
        got = clf.backbone.state_dict()
        assert got.keys() == before.keys()
        for k in before:
            assert torch.equal(got[k], before[k]), k
        # the classifier's features are the encoder's code z (the VAE's mean)
        ae.eval()
        with torch.no_grad():
            z = ae.encode(x[:4]) if isinstance(ae, ConvAutoencoder) else ae.encode(x[:4])[0]
            torch.testing.assert_close(clf.eval().features(x[:4]), z)
        # the copy is independent: fine-tuning changes the classifier's encoder, never the autoencoder's
        labels = torch.arange(24) % 3
        train_classifier(clf, x, labels, steps=3, batch_size=8, augment=False, progress=False)
        assert any(not torch.equal(clf.backbone.state_dict()[k], before[k]) for k in before)
        for k, v in ae.encoder.state_dict().items():
            assert torch.equal(v, before[f"trunk.{k}"]), k


def test_label_budget_study_rows():
    x, y = _blobs(40, 32), torch.arange(40) % 3
    ae, vae = ConvAutoencoder(image_size=32, latent_dim=8), ConvVAE(image_size=32, latent_dim=8)
    st = label_budget_study({"AE": ae, "VAE": vae}, x[:30], y[:30], x[30:], y[30:], budgets=(3, 6), seeds=(0, 1),
                            frozen=True, steps=2, batch_size=4, progress=False)
    assert len(st.rows) == 2 * 2 * 5
    assert {r["method"] for r in st.rows} == {"scratch", "AE", "VAE", "AE (frozen)", "VAE (frozen)"}
    means = st.mean("accuracy")
    assert set(means["scratch"]) == {3, 6}
    assert st.to_markdown().splitlines()[0] == "| labels | scratch | AE | VAE | AE (frozen) | VAE (frozen) |"
    with pytest.raises(ValueError, match="share image size"):
        label_budget_study({"a": ae, "b": ConvAutoencoder(image_size=32, latent_dim=4)}, x, y, x, y, progress=False)


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple of 8"):
        ConvAutoencoder(image_size=30)
    with pytest.raises(ValueError, match=r"expects images \[B, 1, 32, 32\]"):
        ConvVAE(image_size=32)(torch.rand(2, 1, 16, 16))
