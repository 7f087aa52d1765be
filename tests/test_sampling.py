"""MixParams, the Dirichlet sampler and the stick-breaking boxes: values, statistics, errors."""

import math

import numpy as np
import pytest
from scipy import stats

import dali_kmix
from dali_kmix.record import MixParams, area_weights
from dali_kmix.sampling import nest_boxes, params_from_draws, sample_dirichlet, sample_params

# --------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("size,expected", [(32, (0.4834, 0.2969, 0.2197)), (224, (0.5025, 0.2982, 0.1993))],
                         ids=["32x32", "224x224"])
def test_area_weights_of_the_worked_example(size, expected):
    # phi = (0.5, 0.3, 0.2): box 0 side round(s * sqrt(0.5)), box 1 side round(side0 * sqrt(0.4)).
    boxes, w = nest_boxes(np.array([[0.5, 0.3, 0.2]]), np.zeros((1, 2, 2)), size, size)
    side0 = round(size * math.sqrt(0.5))
    side1 = round(side0 * math.sqrt(0.4))
    assert boxes[0, 0].tolist() == [0, 0, side0, side0]
    assert boxes[0, 1].tolist() == [0, 0, side1, side1]
    np.testing.assert_allclose(w[0], expected, atol=5e-5)
    assert w.dtype == np.float32


def test_rounding_is_half_to_even():
    # H * sqrt(1 - v) = 2.5 exactly for H=5, v=0.75 -> rint gives 2 (round-half-up would give 3).
    boxes, _ = nest_boxes(np.array([[0.75, 0.25]]), np.zeros((1, 1, 2)), 5, 5)
    assert boxes[0, 0, 2] - boxes[0, 0, 0] == 2
    # 3.5 -> 4: H=7, v=0.75.
    boxes, _ = nest_boxes(np.array([[0.75, 0.25]]), np.zeros((1, 1, 2)), 7, 7)
    assert boxes[0, 0, 2] - boxes[0, 0, 0] == 4


def test_positions_cover_every_offset_in_the_parent():
    # Box of side 16 in 20 pixels has 5 positions; u = (i + 0.5) / 5 picks offset i, u -> 1 picks the last.
    phi = np.array([[1 / 3, 1 / 3, 1 / 3]])
    for i in range(5):
        u = np.full((1, 2, 2), (i + 0.5) / 5)
        boxes, _ = nest_boxes(phi, u, 20, 20)
        assert boxes[0, 0, 0] == i and boxes[0, 0, 1] == i
    boxes, _ = nest_boxes(phi, np.full((1, 2, 2), np.nextafter(1.0, 0.0)), 20, 20)
    assert boxes[0, 0, 2] == 20 and boxes[0, 1, 2] == boxes[0, 0, 2]


def test_area_weights_formula():
    boxes = np.array([[[2, 3, 12, 13], [4, 5, 8, 9]]], np.int32)
    w = area_weights(boxes, 20, 30)
    np.testing.assert_allclose(w[0], [(600 - 100) / 600, (100 - 16) / 600, 16 / 600], rtol=1e-6)


# --------------------------------------------------------------------------- structure of sampled records


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (5, 3, 5), (65, 225, 227)], ids=["1x1x1", "5x3x5", "65x225x227"])
def test_sampled_records_are_consistent(method, mode, k, n, h, w):
    p = sample_params(method, n, h, w, k=k, alpha=0.7, mode=mode, rng=1)
    assert p.sources.dtype == np.int32 and p.sources.shape == (n, k)
    assert p.weights.dtype == np.float32 and p.weights.shape == (n, k)
    np.testing.assert_array_equal(p.sources[:, 0], np.arange(n))
    np.testing.assert_allclose(p.weights.sum(axis=1), 1.0, atol=1e-6)
    assert (p.weights >= 0).all()
    if method == "dmixup":
        assert p.boxes is None
    else:
        assert p.boxes.dtype == np.int32 and p.boxes.shape == (n, k - 1, 4)
    p.validate(n, h, w)  # nested, inside the image, weights = areas
    for j in range(1, k):  # each level is a permutation of the batch
        np.testing.assert_array_equal(np.sort(p.sources[:, j]), np.arange(n))
    if mode == "batch" and n > 1:
        assert (p.weights == p.weights[0]).all()
        if p.boxes is not None:
            assert (p.boxes == p.boxes[0]).all()


def test_sample_mode_gives_each_sample_its_own_shares():
    p = sample_params("dmixup", 50, 8, 8, k=3, rng=0)
    assert len({tuple(r) for r in p.weights.tolist()}) == 50
    q = sample_params("dcutmix", 50, 64, 64, k=3, rng=0)
    assert len({tuple(r) for r in q.boxes.reshape(50, -1).tolist()}) > 40


def test_k_larger_than_batch():
    p = sample_params("dcutmix", 2, 16, 16, k=9, rng=3)
    assert p.sources.shape == (2, 9)
    assert set(np.unique(p.sources)) <= {0, 1}
    p.validate(2, 16, 16)


def test_empty_batch():
    for method in ("dmixup", "dcutmix"):
        p = sample_params(method, 0, 16, 16, k=3, rng=0)
        assert p.sources.shape == (0, 3) and p.weights.shape == (0, 3)
        p.validate(0, 16, 16)


def test_seed_reproduces_and_generator_continues():
    a = sample_params("dcutmix", 16, 32, 32, rng=7)
    b = sample_params("dcutmix", 16, 32, 32, rng=7)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.sources, b.sources)
    g = np.random.default_rng(7)
    c = sample_params("dcutmix", 16, 32, 32, rng=g)
    d = sample_params("dcutmix", 16, 32, 32, rng=g)
    np.testing.assert_array_equal(c.boxes, a.boxes)
    assert not np.array_equal(c.boxes, d.boxes)


@pytest.mark.parametrize("alpha", [1e-2, 1e-3, [1e-3, 5.0, 1e-3]], ids=["0.01", "0.001", "mixed"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_tiny_alpha_never_gives_nan(alpha, method):
    p = sample_params(method, 2000, 31, 29, k=3, alpha=alpha, rng=0)
    assert np.isfinite(p.weights).all()
    np.testing.assert_allclose(p.weights.sum(axis=1), 1.0, atol=1e-6)
    p.validate(2000, 31, 29)
    # With tiny alpha nearly every draw puts (almost) all the mass on one image.
    assert np.mean(p.weights.max(axis=1) > 0.99) > 0.9


def test_prob_zero_leaves_every_sample_alone():
    p = sample_params("dcutmix", 10, 16, 16, k=4, prob=0.0, rng=0)
    np.testing.assert_array_equal(p.sources, np.repeat(np.arange(10)[:, None], 4, axis=1))
    np.testing.assert_array_equal(p.weights, np.eye(1, 4, dtype=np.float32).repeat(10, axis=0))
    assert (p.boxes == 0).all()


def test_prob_is_the_mixing_rate():
    p = sample_params("dmixup", 20000, 4, 4, k=3, prob=0.3, alpha=1.0, rng=5)
    mixed = p.weights[:, 0] < 1.0
    # binomial 99.9 % interval
    assert abs(mixed.mean() - 0.3) < 3.3 * math.sqrt(0.3 * 0.7 / 20000)


def test_params_from_draws_broadcasts_batch_rows():
    phi = np.array([[0.2, 0.3, 0.5]])
    u = np.array([[[0.1, 0.9], [0.5, 0.5]]])
    perms = np.array([[1, 2, 0], [2, 0, 1]])
    p = params_from_draws("dcutmix", phi, u, perms, np.array([True, False, True]), 10, 10)
    np.testing.assert_array_equal(p.sources, [[0, 1, 2], [1, 1, 1], [2, 0, 1]])
    assert (p.boxes[1] == 0).all() and (p.boxes[0] == p.boxes[2]).all()


# --------------------------------------------------------------------------- statistics


def _ks_beta(x, a, b):
    return stats.kstest(x, stats.beta(a, b).cdf).pvalue


@pytest.mark.parametrize("alpha", [[0.5, 1.0, 2.0], [1 / 3] * 3, [0.2] * 5], ids=["0.5-1-2", "1/3", "0.2xK5"])
def test_dmixup_weights_have_dirichlet_marginals(alpha):
    k = len(alpha)
    p = sample_params("dmixup", 4000, 8, 8, k=k, alpha=alpha, rng=11)
    a = np.asarray(alpha)
    for j in range(k):
        x = p.weights[:, j].astype(np.float64)
        mean = a[j] / a.sum()
        var = a[j] * (a.sum() - a[j]) / (a.sum() ** 2 * (a.sum() + 1))
        assert abs(x.mean() - mean) < 4 * math.sqrt(var / len(x))
        assert _ks_beta(x, a[j], a.sum() - a[j]) > 1e-3


def test_sample_dirichlet_marginals_and_covariance():
    a = np.array([2.0, 3.0, 5.0])
    x = sample_dirichlet(a, 20000, rng=2)
    s = a.sum()
    np.testing.assert_allclose(x.mean(axis=0), a / s, atol=0.005)
    # Cov(x_i, x_j) = -a_i a_j / (s^2 (s + 1)): a no-op or shuffled sampler would get this wrong.
    cov = np.cov(x.T)
    np.testing.assert_allclose(cov[0, 1], -a[0] * a[1] / (s * s * (s + 1)), rtol=0.1)


@pytest.mark.parametrize("alpha", [[1.0, 1.0, 1.0], [0.5, 1.0, 2.0], [0.2] * 5], ids=["ones", "0.5-1-2", "0.2xK5"])
def test_dcutmix_area_weights_follow_the_marginals_up_to_rounding(alpha):
    from dali_kmix.sampling import draw_raw

    a = np.asarray(alpha)
    k, n, side = len(a), 3000, 1000
    phi, u, perms, mixed = draw_raw(np, np.random.default_rng(13), n, k, a, "sample", 1.0)
    p = params_from_draws("dcutmix", phi, u, perms, mixed, side, side)
    # The shares the boxes were cut for are Dirichlet(alpha) ...
    for j in range(k):
        assert _ks_beta(phi[:, j], a[j], a.sum() - a[j]) > 1e-3
    # ... and the exact pixel areas differ from them only by rounding sides to whole pixels.
    assert np.abs(p.weights - phi).max() < 4.0 / side
    if (a >= 1).all():  # no atom at 0 from rounding tiny shares: the areas pass the KS test themselves
        for j in range(k):
            assert _ks_beta(p.weights[:, j].astype(np.float64), a[j], a.sum() - a[j]) > 1e-3


def test_box_positions_are_uniform_inside_the_parent():
    # alpha -> infinity fixes phi = (1/3, 1/3, 1/3): box 0 is 16x16 in 20x20 (5 positions per axis),
    # box 1 is 11x11 inside box 0 (6 positions per axis).
    n = 6000
    p = sample_params("dcutmix", n, 20, 20, k=3, alpha=1e7, rng=17)
    b = p.boxes
    assert (b[:, 0, 2] - b[:, 0, 0] == 16).all() and (b[:, 1, 2] - b[:, 1, 0] == 11).all()
    for counts, cells in [
        (np.bincount(b[:, 0, 0], minlength=5), 5),
        (np.bincount(b[:, 0, 1], minlength=5), 5),
        (np.bincount(b[:, 1, 0] - b[:, 0, 0], minlength=6), 6),
        (np.bincount(b[:, 1, 1] - b[:, 0, 1], minlength=6), 6),
    ]:
        assert len(counts) == cells
        assert stats.chisquare(counts).pvalue > 1e-3
    # y and x offsets are drawn independently
    table = np.zeros((5, 5))
    np.add.at(table, (b[:, 0, 0], b[:, 0, 1]), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_partners_are_uniform_random_permutations():
    n, draws = 6, 3000
    pair = np.zeros((2, n, n))
    self_pairs = 0
    for t in range(draws):
        p = sample_params("dcutmix", n, 8, 8, k=3, rng=1000 + t)
        for j in (1, 2):
            pair[j - 1, np.arange(n), p.sources[:, j]] += 1
        self_pairs += (p.sources[:, 1] == np.arange(n)).sum()
    for j in range(2):
        assert stats.chisquare(pair[j].ravel()).pvalue > 1e-3
    # about 1 self-pair per batch (a no-op shuffle would give n per batch)
    assert abs(self_pairs / draws - 1.0) < 0.1
    # the two levels draw independent permutations
    p = sample_params("dcutmix", 1000, 8, 8, k=3, rng=1)
    assert np.mean(p.sources[:, 1] == p.sources[:, 2]) < 0.01


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(alpha=0.0), ValueError, r"alpha must be > 0.*got 0\.0"),
        (dict(alpha=-1.0), ValueError, r"alpha must be > 0.*got -1\.0"),
        (dict(alpha=float("nan")), ValueError, r"alpha must be > 0.*nan"),
        (dict(alpha=float("inf")), ValueError, r"alpha must be > 0 and finite"),
        (dict(alpha=[1.0, 1.0]), ValueError, r"alpha must be a scalar or have length k=3.*\(2,\)"),
        (dict(alpha=[1.0, -2.0, 1.0]), ValueError, r"alpha must contain only finite values > 0.*-2\.0"),
        (dict(alpha="big"), TypeError, r"alpha must be a positive number"),
        (dict(k=1), ValueError, r"k must be >= 2, got 1"),
        (dict(k=2.5), TypeError, r"k must be an integer, got 2\.5"),
        (dict(mode="pixel"), ValueError, r"mode must be one of \['sample', 'batch'\], got 'pixel'"),
        (dict(prob=1.5), ValueError, r"prob must be in \[0, 1\], got 1\.5"),
        (dict(rng="seed"), TypeError, r"rng must be None, an int seed or a numpy.random.Generator"),
        (dict(rng=-3), ValueError, r"rng seed must be >= 0, got -3"),
    ],
)
def test_bad_sampling_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sample_params("dcutmix", 4, 8, 8, **kwargs)


def test_bad_method_and_sizes():
    with pytest.raises(ValueError, match=r"method must be one of \['dmixup', 'dcutmix', 'saliency-dcutmix'\], got 'cutout'"):
        sample_params("cutout", 4, 8, 8)
    with pytest.raises(ValueError, match=r"height must be >= 1, got 0"):
        sample_params("dcutmix", 4, 0, 8)
    with pytest.raises(ValueError, match=r"n must be >= 0, got -1"):
        sample_params("dcutmix", -1, 8, 8)


def _good():
    return sample_params("dcutmix", 3, 10, 12, k=3, rng=0)


def test_mixparams_shape_errors():
    p = _good()
    with pytest.raises(ValueError, match=r"params.weights must have shape \(N, K\) = \(3, 3\).*\(3, 2\)"):
        MixParams(p.sources, p.weights[:, :2], p.boxes)
    with pytest.raises(ValueError, match=r"params.boxes must have shape \(N, K-1, 4\) = \(3, 2, 4\).*\(3, 1, 4\)"):
        MixParams(p.sources, p.weights, p.boxes[:, :1])
    with pytest.raises(ValueError, match=r"params.sources must have shape \(N, K\)"):
        MixParams(p.sources[:, 0], p.weights, p.boxes)
    with pytest.raises(TypeError, match=r"params.sources must have an integer dtype"):
        MixParams(p.sources.astype(np.float32), p.weights, p.boxes)
    for field, args in (("sources", (None, p.weights)), ("weights", (p.sources, None))):
        with pytest.raises(TypeError, match=rf"params.{field} is required: (int32|float32) \(N, K\), got None"):
            MixParams(*args)
    with pytest.raises(ValueError, match=r"params.boxes has values outside the int32 range: params.boxes\[1, 0, 2\] "
                                         r"= 2147483648"):
        MixParams(p.sources, p.weights, _set(p.boxes.astype(np.int64), (1, 0, 2), 2**31))


def _set(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def test_record_faults_name_where_they_are():
    p = _good()
    with pytest.raises(ValueError, match=r"params.sources must lie in \[0, N=3\), got sources\[2, 1\] = 7"):
        MixParams(_set(p.sources, (2, 1), 7), p.weights, p.boxes).validate(3, 10, 12)
    with pytest.raises(ValueError, match=r"params.boxes must satisfy 0 <= y0 <= y1 <= H=10 and 0 <= x0 <= x1 <= W=12; "
                                         r"box 1 of sample 2 is \(0, 0, 11, 4\)"):
        MixParams(p.sources, p.weights, _set(p.boxes, (2, 1), (0, 0, 11, 4))).validate(3, 10, 12)


@pytest.mark.parametrize("field", ["sources", "weights", "boxes"])
def test_mixparams_fields_cannot_be_reassigned_and_replace_converts(field):
    # The kernels read a record's arrays as int32 / float32 without asking again: float64 weights assigned after
    # construction once gave mix_labels [0, 1.625] for the row [0.25, 0.75] (their bytes read as float32).
    import dataclasses

    p = MixParams([[0, 1], [1, 0]], [[0.25, 0.75], [0.5, 0.5]], [[[0, 0, 1, 1]], [[0, 0, 1, 1]]])
    new = {"sources": np.array([[0, 1], [1, 0]], np.int64), "weights": np.array([[0.25, 0.75], [0.5, 0.5]]),
           "boxes": np.array([[[0, 0, 1, 1]], [[0, 0, 1, 1]]], np.int64)}[field]
    with pytest.raises(dataclasses.FrozenInstanceError, match=field):
        setattr(p, field, new)
    q = dataclasses.replace(p, **{field: np.asfortranarray(new)})
    assert getattr(q, field).dtype == (np.float32 if field == "weights" else np.int32)
    assert getattr(q, field).flags.c_contiguous
    np.testing.assert_array_equal(getattr(q, field), new)
    np.testing.assert_array_equal(dali_kmix.mix_labels(np.array([0, 1]), q, 2), [[0.25, 0.75], [0.5, 0.5]])


def test_mixparams_value_errors():
    p = _good()
    src = p.sources.copy()
    src[1, 0] = 2
    with pytest.raises(ValueError, match=r"sources\[:, 0\] must be arange\(N\).*sources\[1, 0\] = 2"):
        MixParams(src, p.weights, p.boxes).validate(3, 10, 12)
    src = p.sources.copy()
    src[0, 1] = 7
    with pytest.raises(ValueError, match=r"params.sources must lie in \[0, N=3\)"):
        MixParams(src, p.weights, p.boxes).validate(3, 10, 12)
    w = p.weights.copy()
    w[2] = [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"rows must sum to 1, but row 2 sums to 1\.5"):
        MixParams(p.sources, w, None).validate(3)
    w[2] = [np.nan, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"finite and >= 0"):
        MixParams(p.sources, w, None).validate(3)
    with pytest.raises(ValueError, match=r"params are for N=3 samples but the batch has 4"):
        p.validate(4, 10, 12)
    b = p.boxes.copy()
    b[0, 0] = [0, 0, 11, 5]
    with pytest.raises(ValueError, match=r"0 <= y0 <= y1 <= H=10"):
        MixParams(p.sources, p.weights, b).validate(3, 10, 12)
    b = np.array([[[0, 0, 6, 6], [5, 5, 7, 7]]] * 3, np.int32)
    with pytest.raises(ValueError, match=r"must be nested: box 1 of sample 0 \[5, 5, 7, 7\] is not inside box 0"):
        MixParams(p.sources, area_weights(b, 10, 12), b).validate(3, 10, 12)
    b = np.array([[[0, 0, 6, 6], [1, 1, 3, 3]]] * 3, np.int32)
    with pytest.raises(ValueError, match=r"weights must be the pixel-area fractions of params.boxes; sample 0"):
        MixParams(p.sources, np.full((3, 3), 1 / 3, np.float32), b).validate(3, 10, 12)


def test_hand_built_record_is_accepted_and_converted():
    p = MixParams([[0, 1], [1, 0]], [[0.75, 0.25], [1.0, 0.0]], [[[1, 2, 3, 4]], [[0, 0, 0, 0]]])
    assert p.sources.dtype == np.int32 and p.weights.dtype == np.float32 and p.boxes.dtype == np.int32
    assert p.method == "dcutmix" and p.n == 2 and p.k == 2
    p.validate(2, 4, 4)
    assert dali_kmix.MixParams is MixParams


def test_records_store_c_contiguous_arrays():
    # a transposed (strided) array in, dense rows out: DALI refuses strided samples
    w = np.asfortranarray(np.full((5, 3), 1 / 3, np.float32))
    src = np.asfortranarray(np.tile(np.arange(5, dtype=np.int32)[:, None], (1, 3)))
    p = MixParams(src, w)
    assert p.sources.flags.c_contiguous and p.weights.flags.c_contiguous
    np.testing.assert_array_equal(p.weights, w)
    drawn = sample_params("dmixup", 7, 8, 8, k=3, rng=0)
    assert drawn.sources.flags.c_contiguous and drawn.weights.flags.c_contiguous


def _same_record(a, b):
    np.testing.assert_array_equal(a.sources, b.sources)
    assert a.sources.dtype == b.sources.dtype == np.int32
    assert a.weights.dtype == b.weights.dtype == np.float32
    assert np.array_equal(a.weights.view(np.uint32), b.weights.view(np.uint32))
    assert (a.boxes is None) == (b.boxes is None)
    if a.boxes is not None:
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.boxes.dtype == b.boxes.dtype == np.int32


@pytest.mark.parametrize("kernel", ["host-kernel", "numpy-fallback"])
def test_host_samplers_nest_like_params_from_draws(monkeypatch, kernel):
    # record_from_draws (sample_params, sample_anchor_params and the DALI operators nest through it): the CPU
    # build's nesting kernel where it loads, NumPy where it does not; both the very record of params_from_draws
    from dali_kmix import backends, sampling
    from dali_kmix.sampling import draw_raw, record_from_draws, sample_anchor_params

    if kernel == "numpy-fallback":
        monkeypatch.setattr(sampling, "host_kernels", lambda: None)  # the name sampling calls
    elif backends.host_kernels() is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    n, h, w = 37, 29, 41
    centers = np.stack([np.arange(n) % h, (7 * np.arange(n)) % w], axis=1)
    for mode in ("sample", "batch"):
        for method in ("dmixup", "dcutmix", "saliency-dcutmix"):
            draws = draw_raw(np, np.random.default_rng(3), n, 4, np.full(4, 0.7), mode, 0.8)
            c = centers if method == "saliency-dcutmix" else None
            _same_record(record_from_draws(method, *draws, h, w, c), params_from_draws(method, *draws, h, w, c))
            got = sample_params(method, n, h, w, k=4, alpha=0.7, mode=mode, prob=0.8, rng=3, centers=c)
            _same_record(got, params_from_draws(method, *draws, h, w, c))
    with pytest.raises(ValueError, match=r"saliency-dcutmix needs the salient point of every image"):
        record_from_draws("saliency-dcutmix", *draws, h, w)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    anchor = sample_anchor_params(n, h, w, k=3, anchor_ratio=0.4, rng=a)
    monkeypatch.setattr(sampling, "host_kernels", lambda: None)
    _same_record(anchor, sample_anchor_params(n, h, w, k=3, anchor_ratio=0.4, rng=b))


@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency-dcutmix"])
def test_sampled_records_hold_what_the_checked_constructor_keeps(method, mode, n):
    # The samplers build their records without __post_init__ (MixParams._of_kernel: the arrays a kernel just
    # filled): they must be what it would keep, so building the record the checked way converts and copies
    # nothing (the very same arrays), and the record is valid for its batch.
    from dali_kmix.sampling import draw_raw, record_from_draws

    centers = np.stack([np.arange(n) % 9, (5 * np.arange(n)) % 11], axis=1) if method == "saliency-dcutmix" else None
    drawn = sample_params(method, n, 9, 11, k=4, mode=mode, prob=0.8, rng=n, centers=centers)
    nested = record_from_draws(method, *draw_raw(np, np.random.default_rng(n), n, 4, np.ones(4), mode, 0.8), 9, 11,
                               centers)
    for p in (drawn, nested):
        q = MixParams(p.sources, p.weights, p.boxes)
        assert q.sources is p.sources and q.weights is p.weights and q.boxes is p.boxes
        assert (p.sources.dtype, p.weights.dtype) == (np.int32, np.float32) and p.sources.shape == (n, 4)
        assert (p.boxes is None) == (method == "dmixup")
        p.validate(n, 9, 11)


@pytest.mark.parametrize("alpha", [1.0, (0.3, 0.3, 0.3, 0.3), (0.3, 0.5, 0.3, 2.0)], ids=["scalar", "equal", "mixed"])
def test_draws_are_the_generators_gamma_draws_of_each_concentration(alpha):
    # draw_raw asks NumPy's generator for Gamma(alpha + 1) with a scalar shape when every alpha is the same (faster);
    # the stream must be the one an array of shapes gives (records stay what they were for a seed)
    from dali_kmix.sampling import draw_raw

    a = np.broadcast_to(np.asarray(alpha, np.float64), (4,))
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    phi, uniforms = draw_raw(np, g1, 33, 4, a, "sample", 1.0)[:2]
    gamma1 = g2.standard_gamma(a + 1.0, size=(33, 4))
    u = 1.0 - g2.random((33, 4))
    # the C library's log and exp (what the native sampler of fn.kmix_draw calls), the sum left to right
    log, exp = np.vectorize(math.log), np.vectorize(math.exp)
    logg = log(gamma1) + log(u) / a
    e = exp(logg - logg.max(axis=-1, keepdims=True))
    total = ((e[:, 0] + e[:, 1]) + e[:, 2]) + e[:, 3]
    assert np.array_equal(phi.view(np.uint64), (e / total[:, None]).view(np.uint64))
    np.testing.assert_array_equal(uniforms, g2.random((33, 3, 2)))  # and the stream goes on from the same point


# --------------------------------------------------------------------------- the native sampler (kernels/kmix_draw.h)


def _host_kernels_or_skip():
    from dali_kmix.backends import host_kernels

    kernels = host_kernels()
    if kernels is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    if not kernels.native_sampler():
        pytest.skip("this NumPy ships no libnpyrandom.a: the CPU build has no native sampler")
    return kernels


def _words(*ints):
    """The uint32 words NumPy's SeedSequence makes of non-negative ints (least significant first; one for 0)."""
    out = []
    for v in ints:
        out.append(v & 0xFFFFFFFF)
        v >>= 32
        while v:
            out.append(v & 0xFFFFFFFF)
            v >>= 32
    return out


@pytest.mark.parametrize("entropy,spawn", [([1, 2, 3, 4, 5, 6, 7], [0, 0]), ([0], [0, 1]), ([7], []),
                                           ([123456789, 0xFFFFFFFF], [3, 2 ** 33 + 1]), (list(range(130)), [5])],
                         ids=["7-words", "zero", "no-spawn-key", "wide-spawn-key", "130-words"])
def test_cpu_build_generator_is_numpys_pcg64_of_the_seed_sequence(entropy, spawn):
    kernels = _host_kernels_or_skip()
    seq = np.random.SeedSequence(entropy=np.array(entropy, np.uint32), spawn_key=tuple(spawn))
    want = np.random.PCG64(seq).random_raw(2000)
    np.testing.assert_array_equal(kernels.pcg64_raw(entropy, _words(*spawn), 2000), want)


@pytest.mark.parametrize("k", [2, 3, 9])
def test_the_dirichlet_of_the_c_library_functions_is_the_cpu_builds(monkeypatch, k):
    # The host Dirichlet uses the C library's log and exp, in Python (math) where the CPU build does not load and
    # in kmix_draw.h where it does: the same shares bit for bit, tiny alphas' one-hot rows and per-sample alphas too.
    from dali_kmix import sampling
    from dali_kmix.sampling import _dirichlet_from_draws

    _host_kernels_or_skip()
    rng = np.random.default_rng(k)
    for alpha in (np.full(k, 1.0), rng.uniform(0.05, 4.0, k), np.full(k, 5e-324), rng.uniform(1e-3, 3.0, (40, k))):
        g = rng.standard_gamma(alpha + 1.0, size=(40, k))
        u = 1.0 - rng.random((40, k))
        native = _dirichlet_from_draws(alpha, g, u)
        with monkeypatch.context() as m:
            m.setattr(sampling, "host_kernels", lambda: None)
            python = _dirichlet_from_draws(alpha, g, u)
        np.testing.assert_array_equal(native.view(np.uint64), python.view(np.uint64))
        assert np.isfinite(native).all() and np.allclose(native.sum(1), 1.0)
        if alpha.flat[0] == 5e-324:
            assert set(np.unique(native)) <= {0.0, 1.0}  # every row one-hot


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency-dcutmix"])
def test_cpu_build_draws_the_records_of_draw_raw(method, mode):
    # kmix_host_draw_record (what fn.kmix_draw calls): the record that draw_raw's NumPy draws nest to, bit for bit,
    # for the generator of the same SeedSequence; over K, alphas (a vector, tiny), prob and padding flags.
    from dali_kmix.sampling import draw_raw, record_from_draws

    kernels = _host_kernels_or_skip()
    rng = np.random.default_rng(len(method) + len(mode))
    h, w = 37, 53
    for k, alpha, prob, n, padded in [(2, 1.0, 1.0, 1, False), (3, 0.2, 0.5, 7, True), (9, 5.0, 1.0, 64, False),
                                      (3, (0.5, 2.0, 0.1), 0.8, 33, True), (4, 1e-320, 1.0, 16, False)]:
        a = np.broadcast_to(np.asarray(alpha, np.float64), (k,))
        for _ in range(3):
            entropy = rng.integers(0, 2 ** 32, int(rng.integers(1, 20)), dtype=np.uint64).astype(np.uint32)
            spawn = [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=entropy, spawn_key=spawn)))
            valid = rng.random(n) < 0.7 if padded else None
            centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], 1).astype(np.int32) \
                if method == "saliency-dcutmix" else None
            want = record_from_draws(method, *draw_raw(np, gen, n, k, a, mode, prob, valid), h, w, centers)
            (sources, weights, boxes), cut = kernels.draw_record(entropy, _words(*spawn), method, n, k, a, mode, prob,
                                                                 h, w, valid=valid, centers=centers)
            assert cut == (method != "dmixup")
            np.testing.assert_array_equal(sources, want.sources)
            np.testing.assert_array_equal(weights.view(np.uint32), want.weights.view(np.uint32))
            if want.boxes is not None:
                np.testing.assert_array_equal(boxes, want.boxes)


@pytest.mark.parametrize("bitgen", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency-dcutmix"])
def test_sample_params_draws_natively_from_the_generator_itself(monkeypatch, bitgen, method, mode):
    # sample_params draws in the CPU build from the Generator's own bit generator (kmix_host_draw_record_bitgen):
    # the record of draw_raw + params_from_draws from a twin generator, bit for bit, and the generator left in the
    # twin's state (its buffered 32-bit half included), for every NumPy bit generator.
    from dali_kmix import sampling
    from dali_kmix.sampling import draw_raw

    _host_kernels_or_skip()
    h, w = 37, 53
    rng = np.random.default_rng(len(bitgen) * 10 + len(method) + len(mode))
    for k, alpha, prob, n in [(2, 1.0, 1.0, 1), (3, 0.2, 0.5, 7), (9, 5.0, 1.0, 64), (3, (0.5, 2.0, 0.1), 0.8, 33),
                              (4, 1e-320, 1.0, 16)]:
        seed = int(rng.integers(0, 2 ** 63))
        gen, twin = (np.random.Generator(getattr(np.random, bitgen)(seed)) for _ in range(2))
        for g in (gen, twin):
            g.integers(0, 2 ** 32, dtype=np.uint32)  # a 32-bit draw leaves the other half buffered
        centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], 1) if method == "saliency-dcutmix" \
            else None
        a = np.broadcast_to(np.asarray(alpha, np.float64), (k,))
        want = params_from_draws(method, *draw_raw(np, twin, n, k, a, mode, prob), h, w, centers)
        with monkeypatch.context() as m:  # the native path only: draw_raw is not called
            m.setattr(sampling, "draw_raw", lambda *args, **kw: pytest.fail("drew in Python"))
            got = sample_params(method, n, h, w, k=k, alpha=alpha, mode=mode, prob=prob, rng=gen, centers=centers)
        _same_record(got, want)
        assert _state(gen) == _state(twin)
        assert gen.integers(0, 2 ** 32, dtype=np.uint32) == twin.integers(0, 2 ** 32, dtype=np.uint32)
        assert np.array_equal(gen.random(3), twin.random(3))
    # an empty batch draws in Python (batch mode draws a row of shares even then): the same state either way
    gen, twin = np.random.default_rng(1), np.random.default_rng(1)
    sample_params(method, 0, h, w, k=3, mode=mode, rng=gen, centers=np.zeros((0, 2), int) if "sal" in method else None)
    draw_raw(np, twin, 0, 3, np.ones(3), mode, 1.0)
    assert _state(gen) == _state(twin)


def _state(gen):
    """A generator's state, comparable with == (Philox and MT19937 hold arrays)."""
    def plain(v):
        return {key: plain(x) for key, x in v.items()} if isinstance(v, dict) else np.asarray(v).tolist()

    return plain(gen.bit_generator.state)


# --------------------------------------------------------------------------- bad input of the public helpers


@pytest.mark.parametrize(
    "alpha,exc,match",
    [
        ([-0.5, 1.0], ValueError, r"alpha must contain only finite values > 0, got \[-0\.5, 1\.0\]"),
        ([0.0, 1.0], ValueError, r"alpha must contain only finite values > 0, got \[0\.0, 1\.0\]"),
        ([float("nan"), 1.0], ValueError, r"alpha must contain only finite values > 0, got \[nan, 1\.0\]"),
        ([float("inf"), 1.0], ValueError, r"alpha must contain only finite values > 0, got \[inf, 1\.0\]"),
        (1.0, ValueError, r"alpha must be a 1-d sequence of K >= 1 positive numbers.*shape \(\): 1\.0"),
        ([[1.0, 1.0], [1.0, 1.0]], ValueError, r"alpha must be a 1-d sequence.*shape \(2, 2\)"),
        ([], ValueError, r"alpha must be a 1-d sequence.*shape \(0,\)"),
        ("big", TypeError, r"alpha must be a sequence of K positive numbers, got 'big'"),
    ],
    ids=["negative", "zero", "nan", "inf", "scalar", "2d", "empty", "string"],
)
def test_sample_dirichlet_rejects_bad_alpha(alpha, exc, match):
    with pytest.raises(exc, match=match):
        sample_dirichlet(alpha, 3, rng=0)


@pytest.mark.parametrize("size,exc,match", [(-1, ValueError, r"size must be >= 0, got -1"),
                                             (2.5, TypeError, r"size must be an integer, got 2\.5")],
                         ids=["negative", "float"])
def test_sample_dirichlet_rejects_bad_size(size, exc, match):
    with pytest.raises(exc, match=match):
        sample_dirichlet([1.0, 1.0], size, rng=0)


def test_sample_dirichlet_checks_draw_nothing():
    # the checks draw nothing: the same numbers as the generator's Gamma / uniform draws before them
    alpha = np.array([0.3, 1.0, 2.0])
    gen = np.random.default_rng(5)
    g = gen.standard_gamma(alpha + 1.0, size=(4, 3))
    u = 1.0 - gen.random((4, 3))
    logg = np.log(g) + np.log(u) / alpha
    e = np.exp(logg - logg.max(axis=1, keepdims=True))
    np.testing.assert_allclose(sample_dirichlet(alpha, 4, rng=5), e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    assert sample_dirichlet(alpha, 0, rng=5).shape == (0, 3)
    gen = np.random.default_rng(5)
    with pytest.raises(ValueError, match=r"alpha must contain only finite values > 0"):
        sample_dirichlet([1.0, -1.0, 1.0], 4, rng=gen)
    np.testing.assert_array_equal(sample_dirichlet(alpha, 4, rng=gen), sample_dirichlet(alpha, 4, rng=5))


_PHI = [[0.5, 0.25, 0.25]]


@pytest.mark.parametrize(
    "phi,uniforms,hw,centers,exc,match",
    [
        ([[-0.5, 1.0, 0.5]], np.zeros((1, 2, 2)), (10, 10), None, ValueError, r"phi must be >= 0, got phi\[0, 0\] = -0\.5"),
        ([[np.nan, 0.5, 0.5]], np.zeros((1, 2, 2)), (10, 10), None, ValueError, r"phi must be finite, got phi\[0, 0\] = nan"),
        ([[np.inf, 0.5, 0.5]], np.zeros((1, 2, 2)), (10, 10), None, ValueError, r"phi must be finite.*inf"),
        ([[0.2, 0.9, 0.9]], np.zeros((1, 2, 2)), (10, 10), None, ValueError, r"every row of phi must sum to 1.*row 0 summing to 2\.0"),
        ([[0.2, 0.3, 0.3]], np.zeros((1, 2, 2)), (10, 10), None, ValueError, r"every row of phi must sum to 1.*summing to 0\.8"),
        ([0.5, 0.5], np.zeros((1, 1, 2)), (10, 10), None, ValueError, r"phi must have shape \(N, K\) with K >= 2, got shape \(2,\)"),
        (_PHI, np.full((1, 2, 2), 1.5), (10, 10), None, ValueError, r"uniforms must lie in \[0, 1\), got uniforms\[\(0, 0, 0\)\] = 1\.5"),
        (_PHI, np.full((1, 2, 2), -0.5), (10, 10), None, ValueError, r"uniforms must lie in \[0, 1\).*= -0\.5"),
        (_PHI, np.full((1, 2, 2), 1.0), (10, 10), None, ValueError, r"uniforms must lie in \[0, 1\).*= 1\.0"),
        (_PHI, np.full((1, 2, 2), np.nan), (10, 10), None, ValueError, r"uniforms must lie in \[0, 1\).*= nan"),
        (_PHI, np.zeros((1, 1, 2)), (10, 10), None, ValueError, r"uniforms must have shape \(N, K - 1, 2\) = \(1, 2, 2\).*got \(1, 1, 2\)"),
        (_PHI, np.zeros((1, 2, 2)), (0, 10), None, ValueError, r"height must be >= 1, got 0"),
        (_PHI, np.zeros((1, 2, 2)), (10, 2**31), None, ValueError, r"width must be <= 2\^31 - 1 = 2147483647.*got 2147483648"),
        (_PHI, np.zeros((1, 2, 2)), (2**31, 10), None, ValueError, r"height must be <= 2\^31 - 1.*got 2147483648"),
        (_PHI, np.zeros((1, 2, 2)), (10.0, 10), None, TypeError, r"height must be an integer, got 10\.0"),
        (_PHI, np.zeros((1, 2, 2)), (10, 10), np.array([[[100, -100], [5, 5]]]), ValueError,
         r"centers must lie inside the 10 x 10 image.*y in \[5, 100\] and x in \[-100, 5\]"),
        (_PHI, np.zeros((1, 2, 2)), (10, 10), np.array([[[1, 1]]]), ValueError,
         r"centers must be integer \(N, K - 1, 2\) = \(1, 2, 2\), got int64 \(1, 1, 2\)"),
        (_PHI, np.zeros((1, 2, 2)), (10, 10), np.full((1, 2, 2), 1.5), ValueError, r"centers must be integer.*float64"),
    ],
    ids=["phi-negative", "phi-nan", "phi-inf", "phi-sum-2", "phi-sum-0.8", "phi-1d", "u-1.5", "u-negative", "u-1",
         "u-nan", "u-shape", "height-0", "width-2^31", "height-2^31", "height-float", "centers-outside",
         "centers-shape", "centers-float"],
)
def test_nest_boxes_checks_its_preconditions(phi, uniforms, hw, centers, exc, match):
    with pytest.raises(exc, match=match):
        nest_boxes(np.asarray(phi, dtype=np.float64), uniforms, *hw, centers)


def test_nest_boxes_row_sums_allow_float32_rounding_only():
    # float32 rows from a Gamma normalisation sum to 1 only within float32 rounding: accepted
    gen = np.random.default_rng(3)
    g = gen.standard_gamma(np.full(16, 0.3), size=(50, 16)).astype(np.float32)
    phi32 = g / g.sum(axis=1, keepdims=True)
    assert np.abs(phi32.astype(np.float64).sum(axis=1) - 1.0).max() > 0  # really off by rounding
    u = gen.random((50, 15, 2))
    boxes, weights = nest_boxes(phi32, u, 64, 48)
    assert boxes.shape == (50, 15, 4) and weights.shape == (50, 16)
    # the public, checked nesting gives the record the samplers build from their draws
    draws = dali_kmix.sampling.draw_raw(np, np.random.default_rng(9), 6, 4, np.full(4, 0.5), "sample", 1.0)
    p = params_from_draws("dcutmix", *draws, 20, 30)
    b, w = nest_boxes(draws[0], draws[1], 20, 30)
    np.testing.assert_array_equal(p.boxes, b)
    np.testing.assert_array_equal(p.weights, w)
    # with centres the uniforms are not read, so None is accepted
    c = np.zeros((6, 3, 2), np.int64)
    np.testing.assert_array_equal(nest_boxes(draws[0], None, 20, 30, c)[0], nest_boxes(draws[0], draws[1], 20, 30, c)[0])
    # but a row off by more than rounding is refused
    off = phi32.astype(np.float64)
    off[7] *= 1.001
    with pytest.raises(ValueError, match=r"every row of phi must sum to 1 \(within .*\), got row 7 summing to 1\.00"):
        nest_boxes(off, u, 64, 48)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: sample_params("dcutmix", 2, 2**31, 3, k=3, rng=0), r"height must be <= 2\^31 - 1 = 2147483647.*got 2147483648"),
        (lambda: sample_params("dcutmix", 2, 3, 2**31, k=3, rng=0), r"width must be <= 2\^31 - 1.*got 2147483648"),
        (lambda: sample_params("dmixup", 2, 2**40, 3, k=3, rng=0), r"height must be <= 2\^31 - 1.*got 1099511627776"),
        (lambda: dali_kmix.sampling.check_sample_args("dcutmix", 2, 3, 2**31, 3, 1.0, "sample", 1.0),
         r"width must be <= 2\^31 - 1.*got 2147483648"),
        (lambda: dali_kmix.sampling.sample_anchor_params(4, 2**31, 8, rng=0), r"height must be <= 2\^31 - 1.*got 2147483648"),
        (lambda: dali_kmix.sampling.sample_anchor_params(4, 8, 2**31, rng=0), r"width must be <= 2\^31 - 1.*got 2147483648"),
    ],
    ids=["sample_params-height", "sample_params-width", "dmixup-height", "check_sample_args-width", "anchor-height",
         "anchor-width"],
)
def test_image_sides_beyond_int32_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_int32_side_bound_is_2_31_minus_1():
    p = sample_params("dcutmix", 2, 2**31 - 1, 3, k=3, rng=0)  # the largest side still fits the int32 boxes
    assert p.boxes.min() >= 0 and p.boxes[..., 2].max() <= 2**31 - 1
    with pytest.raises(ValueError, match=r"height must be <= 2\^31 - 1"):
        sample_params("dcutmix", 2, 2**31, 3, k=3, rng=0)


def test_anchor_default_alpha_fits_every_k_and_draws_as_before_for_k3():
    from dali_kmix.sampling import sample_anchor_params

    p = sample_anchor_params(4, 8, 8, k=4, rng=0)  # the default is one concentration for every partner
    assert p.weights.shape == (4, 4)
    for field in ("sources", "weights", "boxes"):
        np.testing.assert_array_equal(getattr(sample_anchor_params(5, 9, 11, rng=1), field),
                                      getattr(sample_anchor_params(5, 9, 11, alpha=(2 / 9, 2 / 9), rng=1), field))


@pytest.mark.parametrize("k,alpha,match", [
    (4, (0.5, 0.5), r"alpha must be a scalar or K - 1 = 3 partner concentrations \(k=4 .*got 2 values: \(0\.5, 0\.5\)"),
    (3, [1.0, 1.0, 1.0], r"alpha must be a scalar or K - 1 = 2 partner concentrations \(k=3 .*got 3 values"),
], ids=["k4-two", "k3-three"])
def test_anchor_alpha_length_error_names_k_minus_1(k, alpha, match):
    from dali_kmix.sampling import sample_anchor_params

    with pytest.raises(ValueError, match=match):
        sample_anchor_params(4, 8, 8, k=k, alpha=alpha, rng=0)


# --------------------------------------------------------------------------- centers of a GPU batch


class _CupyLike:
    """A stand-in for a CuPy array (its type's module is cupy's): NumPy conversion refused as CuPy refuses it,
    ``.get()`` the host copy."""

    __module__ = "cupy._core.core"

    def __init__(self, a):
        self._a = np.asarray(a)
        self.shape, self.dtype = self._a.shape, self._a.dtype

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self):
        return self._a.copy()


def test_sample_params_takes_cupy_centers():
    # salient_points of a CuPy batch gives CuPy points, documented as usable as centers=; np.asarray raised
    # CuPy's implicit-conversion TypeError
    centers = np.array([[1, 2], [7, 8], [0, 0]], np.int32)
    want = sample_params("saliency-dcutmix", 3, 8, 9, k=3, rng=5, centers=centers)
    got = sample_params("saliency-dcutmix", 3, 8, 9, k=3, rng=5, centers=_CupyLike(centers))
    for field in ("sources", "weights", "boxes"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    with pytest.raises(ValueError, match=r"centers must lie inside the 8 x 9 image, got values in \[0, 9\]"):
        sample_params("saliency-dcutmix", 2, 8, 9, centers=_CupyLike([[0, 0], [7, 9]]))


@pytest.mark.gpu
def test_sample_params_takes_the_salient_points_of_a_cupy_batch():
    import cupy

    from dali_kmix import saliency

    x = np.zeros((3, 40, 50, 3), np.uint8)
    x[:, 10:15, 20:25] = 200
    points = saliency.salient_points(cupy.asarray(x), "HWC")
    want = sample_params("saliency-dcutmix", 3, 40, 50, k=3, rng=5, centers=points.get())
    got = sample_params("saliency-dcutmix", 3, 40, 50, k=3, rng=5, centers=points)
    np.testing.assert_array_equal(got.boxes, want.boxes)
