"""wsbus.schedules: the reference's alpha staircase, its scaling, picklability and the plot."""
import pickle

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from wsbus.schedules import Constant, Gradual, as_schedule, constant, gradual, plot_schedules  # noqa: E402


def reference_alpha(step: int) -> float:
    """train_bus.py: 1 - tf.train.exponential_decay(0.99, step, 2000, 0.9, staircase=True)."""
    return 1.0 - 0.99 * 0.9 ** (step // 2000)


def test_gradual_reference_values():
    g = gradual()
    assert g == Gradual(step_size=2000, start=0.01, end=1.0, decay=0.9)
    assert g(0) == pytest.approx(0.01, abs=1e-15)
    assert g(1999) == pytest.approx(0.01, abs=1e-15)
    assert g(2000) == pytest.approx(1 - 0.99 * 0.9, abs=1e-15)  # 0.109
    assert g(59999) == pytest.approx(1 - 0.99 * 0.9 ** 29, abs=1e-15)  # 0.95337
    for step in (0, 1, 1999, 2000, 2001, 3999, 4000, 31234, 59999, 60000):
        assert g(step) == pytest.approx(reference_alpha(step), abs=1e-15)


def test_gradual_scales_to_run_length():
    g = gradual(total_steps=600)
    assert g.step_size == 20
    assert g(19) == pytest.approx(0.01) and g(20) == pytest.approx(0.109)
    assert g(599) == pytest.approx(reference_alpha(59999))
    # the same 30 stairs, whatever the length (also non-integral stair lengths)
    for total in (300, 1000, 60000):
        s = gradual(total_steps=total)
        for k in range(30):
            first = -(-k * s.step_size // 1)  # first integer step of stair k
            assert s(int(first)) == pytest.approx(reference_alpha(2000 * k))
    assert gradual(1000).step_size == pytest.approx(2000 / 60)
    assert gradual(600, step_size=100)(150) == pytest.approx(0.109)
    assert gradual(600, start=0.2, end=0.8)(0) == pytest.approx(0.2)


def test_constant_and_as_schedule():
    assert constant()(12345) == 0.5 and Constant(0.25)(0) == 0.25
    assert as_schedule(0.3) == Constant(0.3) and as_schedule(1) == Constant(1.0)
    assert as_schedule("constant") == Constant(0.5)
    assert as_schedule("gradual", total_steps=600) == gradual(600)
    assert as_schedule("0.7") == Constant(0.7)

    def f(step):
        return 0.1

    assert as_schedule(f) is f
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        as_schedule("cosine")
    with pytest.raises(TypeError):
        as_schedule(True)
    with pytest.raises(TypeError):
        as_schedule([0.5])
    with pytest.raises(ValueError):
        constant(-1.0)
    with pytest.raises(ValueError):
        Gradual(decay=1.5)
    with pytest.raises(ValueError):
        gradual(0)
    with pytest.raises(TypeError, match="integer"):
        gradual()(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        gradual()(-1)


def test_schedules_pickle_and_repr():
    for s in (constant(0.5), gradual(600), Gradual(step_size=33.5, start=0.0, end=2.0, decay=0.5)):
        t = pickle.loads(pickle.dumps(s))
        assert t == s and t(100) == s(100)
        assert eval(repr(s), {"Constant": Constant, "Gradual": Gradual}) == s


def test_plot_schedules_writes_a_figure(tmp_path):
    fig = plot_schedules(total_steps=600)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2
    x, y = lines[1].get_data()
    assert x[0] == 0 and y[0] == pytest.approx(0.01) and max(y) == pytest.approx(reference_alpha(59999))
    assert set(lines[0].get_ydata()) == {0.5}
    path = tmp_path / "alpha.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000
    fig2 = plot_schedules([0.5, "gradual"], total_steps=60000, labels=["static", "gradual"])
    assert [t.get_text() for t in fig2.axes[0].get_legend().get_texts()] == ["static", "gradual"]
    with pytest.raises(ValueError, match="labels"):
        plot_schedules([0.5], labels=["a", "b"])
    import matplotlib.pyplot as plt
    plt.close("all")
