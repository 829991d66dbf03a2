"""wsbus.viz.detections: figures render to valid PNG files and draw what they claim."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from wsbus.data import Sample  # noqa: E402
from wsbus.viz.detections import (  # noqa: E402
    MOI_COLORS,
    detection_panels,
    draw_boxes,
    plot_bootstrap,
    plot_precision_vs_rank,
)
from wsbus.viz.samples import CLASS_COLORS  # noqa: E402

torch.set_num_threads(1)


def check_png(fig, path):
    assert isinstance(fig, Figure)
    fig.savefig(path, dpi=60)
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w > 100 and h > 100
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.std() > 5.0  # not a blank canvas


def images(n=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_draw_boxes_colours_positions_and_captions():
    fig = Figure()
    ax = fig.subplots()
    image = torch.rand(1, 40, 50)  # a [C, H, W] float tensor in [0, 1]
    draw_boxes(ax, image, torch.tensor([[5.0, 6.0, 15.0, 20.0], [20.0, 1.0, 30.0, 9.0]]), labels=[1, 2],
               scores=torch.tensor([0.93, 0.5]))
    r = rects(ax)
    assert len(r) == 2
    assert r[0].get_edgecolor() == to_rgba(CLASS_COLORS[1]) and r[1].get_edgecolor() == to_rgba(CLASS_COLORS[2])
    # Continuous pixel edges sit half a pixel before imshow's pixel centres.
    assert r[0].get_xy() == (4.5, 5.5) and (r[0].get_width(), r[0].get_height()) == (10.0, 14.0)
    assert [t.get_text() for t in ax.texts] == ["benign 0.93", "malignant 0.50"]
    assert ax.images[0].get_array().shape == (40, 50)
    ax2 = fig.add_subplot(2, 2, 4)
    draw_boxes(ax2, np.zeros((10, 10, 3), np.uint8), [[1, 1, 4, 4]], color="#123456")
    assert rects(ax2)[0].get_edgecolor() == to_rgba("#123456") and not ax2.texts


def test_detection_panels_fig6_style(tmp_path):
    imgs = images(4)
    img0 = imgs[0]
    truth = [
        Sample(img0, np.array([[10, 10, 30, 30]], np.float32), np.array([1]), 1, "b1"),
        {"boxes": torch.tensor([[20.0, 20.0, 40.0, 44.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[5.0, 5.0, 20.0, 20.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    detections = [
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1, 2]),
         "scores": torch.tensor([0.9, 0.3])},                      # hit; the 0.3 box is below the threshold
        {"boxes": torch.tensor([[21.0, 20.0, 40.0, 44.0]]), "labels": torch.tensor([2]),
         "scores": torch.tensor([0.8])},                            # hit
        {"boxes": torch.tensor([[40.0, 40.0, 60.0, 60.0]]), "labels": torch.tensor([2]),
         "scores": torch.tensor([0.7])},                            # miss (no overlap)
        {"boxes": torch.tensor([[30.0, 30.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
         "scores": torch.tensor([0.6])},                            # normal image: a false positive
    ]
    moi = [{"most_malignant": [11, 11, 29, 29], "most_abnormal": torch.tensor([9.0, 9.0, 31.0, 31.0])},
           None, {"most_malignant": [6, 6, 19, 19]}, None]
    fig = detection_panels(imgs, truth, detections, moi=moi, ncols=2)
    check_png(fig, tmp_path / "panels.png")
    axes = fig.axes
    titles = [ax.get_title() for ax in axes]
    assert titles == ["b1: benign · CorLoc hit", "1: malignant · CorLoc hit", "2: malignant · CorLoc miss",
                      "3: normal"]
    # Panel 0: 1 GT + 1 detection above the threshold + 2 MoI boxes; captions only on detections.
    assert len(rects(axes[0])) == 4 and [t.get_text() for t in axes[0].texts] == ["benign 0.90"]
    styles = sorted((p.get_linestyle(), p.get_edgecolor()) for p in rects(axes[0]))
    assert ("--", to_rgba(CLASS_COLORS[1])) in styles and ("-", to_rgba(CLASS_COLORS[1])) in styles
    assert (":", to_rgba(MOI_COLORS["most_abnormal"])) in styles
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["ground truth benign", "ground truth malignant", "detection benign (score >= 0.5)",
                      "detection malignant (score >= 0.5)", "MoI most_malignant", "MoI most_abnormal"]
    # Custom titles, no ground truth, top-1 detection only.
    fig = detection_panels(imgs[:2], None, detections[:2], titles=["a", "b"], max_detections=1, score_thresh=0.0)
    check_png(fig, tmp_path / "panels2.png")
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert len(rects(fig.axes[0])) == 1


def test_detection_panels_bad_input():
    imgs = images(2)
    with pytest.raises(ValueError, match="detections has 1 entries for 2 images"):
        detection_panels(imgs, None, [{"boxes": [], "labels": [], "scores": []}])
    with pytest.raises(ValueError, match=r"images\[0\]: image must be"):
        detection_panels([np.zeros((4, 5, 6))], None, None)
    with pytest.raises(ValueError, match=r"float image must lie in \[0, 1\]"):
        detection_panels([np.full((8, 8), 200.0)], None, None)
    with pytest.raises(ValueError, match=r"detections\[0\] is missing \['scores'\]"):
        detection_panels(imgs[:1], None, [{"boxes": [], "labels": []}])
    with pytest.raises(ValueError, match="at least one image"):
        detection_panels([], None, None)


def test_precision_vs_rank_curve(tmp_path):
    # Ranked by confidence: 0.9 (ok), 0.7 (ok), 0.5 (wrong), 0.1 (wrong) -> precision 100, 100, 66.7, 50.
    fig = plot_precision_vs_rank([0.9, 0.1, 0.5, 0.7], [True, False, False, True])
    check_png(fig, tmp_path / "prec.png")
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(line.get_ydata(), [100, 100, 200 / 3, 50])
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert notes == ["top 50%: 100.0%", "top 75%: 66.7%"]
    rng = np.random.default_rng(0)
    conf = rng.random(200)
    check_png(plot_precision_vs_rank(torch.from_numpy(conf), rng.random(200) < conf), tmp_path / "prec2.png")
    with pytest.raises(ValueError, match="4 entries but correct has 3"):
        plot_precision_vs_rank([0.9, 0.1, 0.5, 0.7], [1, 0, 1])
    with pytest.raises(ValueError, match="boolean"):
        plot_precision_vs_rank([0.9, 0.1], [0.5, 1])


def test_plot_bootstrap_two_methods(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.85
    b = rng.random(300) < 0.70
    fig = plot_bootstrap({"joint": a, "strong_few": b}, n_boot=300, seed=2)
    check_png(fig, tmp_path / "boot.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith(f"joint: {100 * a.mean():.2f}% [") and labels[1].startswith("strong_few:")
    assert "McNemar p =" in ax.get_title()
    # One method, different data sizes: still renders (no paired test).
    fig = plot_bootstrap({"only": rng.random(50) < 0.5}, n_boot=100)
    check_png(fig, tmp_path / "boot1.png")
    assert "McNemar" not in fig.axes[0].get_title()
    with pytest.raises(TypeError, match="non-empty dict"):
        plot_bootstrap([a, b])


def _bar_edges(ax, j):
    """Left and right edges and heights of the histogram bars of the ``j``-th method (its ``hist`` container)."""
    bars = list(ax.containers[j])
    assert bars and all(isinstance(r, Rectangle) for r in bars)
    left = np.array([r.get_x() for r in bars])
    right = left + np.array([r.get_width() for r in bars])
    return left, right, np.array([r.get_height() for r in bars])


@pytest.mark.parametrize("n_a, n_b", [(37, 37), (37, 23)])
def test_plot_bootstrap_bins_are_centred_on_the_corloc_lattice(n_a, n_b):
    """CorLoc on n images takes the values k/n only: every bin is centred on one such value, its edges at
    (k +- 0.5)/n, so each bin holds exactly the resamples with one k (no empty or double bins by aliasing)."""
    from wsbus.evaluate import bootstrap_means

    rng = np.random.default_rng(3)
    a, b = rng.random(n_a) < 0.7, rng.random(n_b) < 0.4
    fig = plot_bootstrap({"a": a, "b": b}, n_boot=400, seed=5)
    ax = fig.axes[0]
    if n_a == n_b:
        boots = bootstrap_means(np.stack([a, b]), n_boot=400, seed=5)
    else:
        boots = np.stack([bootstrap_means(a, n_boot=400, seed=5), bootstrap_means(b, n_boot=400, seed=5)])
    for j, (n, boot) in enumerate(((n_a, boots[0]), (n_b, boots[1]))):
        left, right, heights = _bar_edges(ax, j)
        np.testing.assert_allclose(right - left, 100 / n)                   # one lattice step wide
        centres = (left + right) / 2 * n / 100
        np.testing.assert_allclose(centres, np.round(centres), atol=1e-9)  # centred on k/n
        k = np.round(boot * n).astype(int)
        want = np.bincount(k - k.min())
        assert np.round(centres).astype(int).tolist() == list(range(k.min(), k.max() + 1))
        np.testing.assert_array_equal(heights, want)                        # each bar: the resamples with that k
    # many lattice values: at most `bins` bins, each an odd number of values wide, still centred on one value
    big = rng.random(5000) < 0.5
    left, right, heights = _bar_edges(plot_bootstrap({"big": big}, n_boot=300, seed=1, bins=10).axes[0], 0)
    assert len(left) <= 10 and heights.sum() == 300
    width = np.round((right - left) * 5000 / 100).astype(int)
    assert len(set(width.tolist())) == 1 and width[0] % 2 == 1
    centres = (left + right) / 2 * 5000 / 100
    np.testing.assert_allclose(centres, np.round(centres), atol=1e-6)
