"""Saliency-DCutMix: the saliency maps, the placement of the boxes, and the operator."""

import functools
import warnings

import numpy as np
import pytest

import dali_kmix
from dali_kmix import saliency
from dali_kmix.record import MixParams
from dali_kmix.sampling import draw_raw, params_from_draws, sample_params

try:
    import cv2

    HAS_CV_SALIENCY = hasattr(cv2, "saliency")
except ImportError:  # opencv-contrib is a test extra; without it only the OpenCV comparisons skip
    cv2 = None
    HAS_CV_SALIENCY = False


def _blob_images(n, h, w, layout="HWC", dtype=np.uint8):
    """Image i: values 10 i + (0..4 of noise) with a 5x5 blob of value 10 i + 9 at a known place.

    ``value // 10`` names the source of every pixel; returns (images, blob centres).
    """
    rng = np.random.default_rng(n * 7 + h)
    pts = np.stack([rng.integers(6, h - 6, n), rng.integers(6, w - 6, n)], axis=1)
    x = np.empty((n, h, w, 3), dtype)
    for i, (y, xx) in enumerate(pts):
        x[i] = 10 * i + rng.integers(0, 5, (h, w, 1))
        x[i, y - 2:y + 3, xx - 2:xx + 3] = 10 * i + 9
    if layout == "CHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, pts


# --------------------------------------------------------------------------- maps


@pytest.mark.skipif(not HAS_CV_SALIENCY, reason="opencv-contrib saliency module not installed")
@pytest.mark.parametrize("precision", [np.float64, np.float32], ids=["f64-cpu-default", "f32-gpu-default"])
def test_spectral_residual_agrees_with_opencv_on_photographs(precision):
    from dali_kmix.apps.data import PHOTOS, _load_photo

    rng = np.random.default_rng(0)
    dist = []
    for name in PHOTOS:
        img = _load_photo(name)
        for _ in range(4):
            h, w = img.shape[:2]
            s = int(min(h, w) * rng.uniform(0.3, 1.0))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            grey = cv2.cvtColor(np.ascontiguousarray(img[y:y + s, x:x + s]), cv2.COLOR_RGB2GRAY)
            small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_LINEAR)
            ok, ref = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(small)
            assert ok
            ours = saliency.spectral_residual(small[None].astype(np.float32), precision=precision)[0]
            assert ours.dtype == np.float32
            a = np.unravel_index(np.argmax(ref), ref.shape)
            b = np.unravel_index(np.argmax(ours), ours.shape)
            dist.append(max(abs(int(a[0]) - int(b[0])), abs(int(a[1]) - int(b[1]))))
            # the maps themselves agree, not just their peaks
            assert np.corrcoef(ref.ravel(), ours.ravel())[0, 1] > 0.99
    assert max(dist) <= 2, dist


# Sizes that resize to the 64 x 64 working grid by many different factors (non-square, odd, up and down).
SIZES = [(64, 64), (100, 100), (224, 224), (96, 128), (128, 96), (120, 160), (150, 200), (256, 192), (333, 500)]
SIZE_IDS = [f"{h}x{w}" for h, w in SIZES]
PRECISIONS = [np.float64, np.float32]
PRECISION_IDS = ["f64", "f32"]
needs_cv_saliency = pytest.mark.skipif(not HAS_CV_SALIENCY, reason="opencv-contrib saliency module not installed")


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _cell_centre(sal, h, w):
    """The full-resolution pixel ``salient_points`` reports for the argmax cell of a working-size map."""
    ws = sal.shape[-1]
    iy, ix = np.unravel_index(int(np.argmax(sal)), sal.shape)
    return min(((2 * iy + 1) * h) // (2 * ws), h - 1), min(((2 * ix + 1) * w) // (2 * ws), w - 1)


@functools.lru_cache(maxsize=None)
def _photo(name):
    from dali_kmix.apps.data import _load_photo

    return _load_photo(name)


def _framed(img, h, w, frame):
    """``img`` fitted into an h x w frame: stretched ("resize"), or at 3/4 of the height between
    black bars above and below ("letterbox"), or at 3/4 of the width between bars left and right
    ("pillarbox")."""
    from PIL import Image

    if frame == "resize":
        return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    ch, cw = (round(0.75 * h), w) if frame == "letterbox" else (h, round(0.75 * w))
    out = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    out[y0:y0 + ch, x0:x0 + cw] = np.asarray(Image.fromarray(img).resize((cw, ch), Image.BILINEAR))
    return out


def _opencv_map(g):
    """OpenCV contrib's spectral-residual map of one float32 64 x 64 grey copy (its own resize to
    64 x 64 is then the identity, so both sides see the same pixels)."""
    ok, ref = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(np.ascontiguousarray(g, np.float32))
    assert ok
    return ref


def _check_photo_agreement(xp, size, frame, precision):
    from dali_kmix.apps.data import PHOTOS

    h, w = size
    for name in PHOTOS:
        img = _framed(_photo(name), h, w, frame)
        g = saliency.small_grey(xp.asarray(img)[None], "HWC")
        ref = _opencv_map(_host(g)[0])
        ours = _host(saliency.spectral_residual(g, precision=precision))[0]
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        a = np.unravel_index(np.argmax(ref), ref.shape)
        b = np.unravel_index(np.argmax(ours), ours.shape)
        assert max(abs(int(a[0]) - int(b[0])), abs(int(a[1]) - int(b[1]))) <= 1, (name, a, b)
        assert np.corrcoef(ref.ravel(), ours.ravel())[0, 1] > 0.99, name
        if precision == np.float64 and xp is np:  # the whole path, as the operator calls it
            assert tuple(_host(saliency.salient_points(xp.asarray(img)[None]))[0]) == _cell_centre(ours, h, w)


@needs_cv_saliency
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("frame", ["resize", "letterbox", "pillarbox"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_spectral_residual_agrees_with_opencv_on_framed_photographs(size, frame, precision):
    _check_photo_agreement(np, size, frame, precision)


@pytest.mark.gpu
@needs_cv_saliency
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("frame", ["resize", "letterbox", "pillarbox"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_spectral_residual_agrees_with_opencv_on_framed_photographs_gpu(size, frame, precision):
    import cupy

    _check_photo_agreement(cupy, size, frame, precision)


def _object_scene(h, w, background, shape, seed):
    """One uniform object (a rectangle or a disc, 10-30 % of each side, at least 50 grey levels
    away from the background) on a flat, ramped (40 levels across, random direction) or bowl-shaped
    background; no noise, so the spectrum has exact zeros. Returns (uint8 HWC image, object mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    base = rng.uniform(30, 200)
    if background == "flat":
        bg = np.full((h, w), base)
    elif background == "ramp":
        a = rng.uniform(0, 2 * np.pi)
        bg = base + 40 * (np.cos(a) * yy + np.sin(a) * xx)
    else:
        bg = base + 80 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    oh, ow = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
    cy, cx = rng.uniform(oh / 2 + 1, h - oh / 2 - 1), rng.uniform(ow / 2 + 1, w - ow / 2 - 1)
    y, x = np.mgrid[0:h, 0:w]
    if shape == "rect":
        mask = (np.abs(y - cy) <= oh / 2) & (np.abs(x - cx) <= ow / 2)
    else:
        r = min(oh, ow) / 2
        mask = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    value = base + rng.choice([-1, 1]) * rng.uniform(50, 100)
    value = value if 0 <= value <= 255 else base + np.sign(128 - base) * rng.uniform(50, 100)
    img = np.clip(np.round(np.where(mask, value, bg)), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2), mask


def _on_object(mask, point, cells=2):
    """``point`` lies on the object's mask dilated by ``cells`` cells of the working grid (the map's
    resolution; the residual peaks on the object's outline, which the 5 x 5 blur spreads by a cell)."""
    h, w = mask.shape
    my, mx = int(np.ceil(cells * h / saliency.WORK_SIZE)), int(np.ceil(cells * w / saliency.WORK_SIZE))
    y, x = int(point[0]), int(point[1])
    return bool(mask[max(0, y - my):y + my + 1, max(0, x - mx):x + mx + 1].any())


def _check_point_on_object(xp, size, background, shape, precision):
    h, w = size
    for seed in range(4):
        img, mask = _object_scene(h, w, background, shape, seed)
        g = saliency.small_grey(xp.asarray(img)[None], "HWC")
        sal = _host(saliency.spectral_residual(g, precision=precision))[0]
        assert np.isfinite(sal).all()
        point = _cell_centre(sal, h, w)
        assert _on_object(mask, point), (seed, point, np.argwhere(mask).mean(axis=0))
    points = _host(saliency.salient_points(xp.asarray(np.stack([_object_scene(h, w, background, shape, s)[0]
                                                                  for s in range(4)]))))
    for seed, point in enumerate(points):  # the operator's path (default precision of the device)
        assert _on_object(_object_scene(h, w, background, shape, seed)[1], point), (seed, point)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("shape", ["rect", "disc"])
@pytest.mark.parametrize("background", ["flat", "ramp", "bowl"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_salient_point_falls_on_the_object(size, background, shape, precision):
    _check_point_on_object(np, size, background, shape, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("shape", ["rect", "disc"])
@pytest.mark.parametrize("background", ["flat", "ramp", "bowl"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_salient_point_falls_on_the_object_gpu(size, background, shape, precision):
    import cupy

    _check_point_on_object(cupy, size, background, shape, precision)


def _zero_bin_images():
    """A 16 x 16 square on a flat 64 x 64 background (whole rows and columns of exact spectral
    zeros), a constant image (all zero but the DC term) and an all-black one (no energy at all)."""
    square = np.full((64, 64), 40.0, np.float32)
    square[20:36, 8:24] = 200.0
    return np.stack([square, np.full((64, 64), 77.0, np.float32), np.zeros((64, 64), np.float32)])


def _check_zero_bins(xp, precision):
    g = _zero_bin_images()
    sal = _host(saliency.spectral_residual(xp.asarray(g), precision=precision))
    assert np.isfinite(sal).all()
    iy, ix = np.unravel_index(int(np.argmax(sal[0])), (64, 64))
    assert 18 <= iy <= 37 and 6 <= ix <= 25, (iy, ix)  # on the square (its outline), not on a zero pattern
    np.testing.assert_allclose(sal[1], 1.0, rtol=1e-5)  # the DC term alone: a flat map
    assert (sal[2] == 0).all()
    # no absolute floor: the grey scale (0..1 instead of 0..255, or x 1000) changes nothing
    for scale in (1 / 255, 1000.0):
        scaled = _host(saliency.spectral_residual(xp.asarray(g[:1] * np.float32(scale)), precision=precision))
        np.testing.assert_allclose(scaled[0], sal[0], atol=1e-4)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_spectral_residual_zero_bins_carry_no_residual(precision):
    _check_zero_bins(np, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_spectral_residual_zero_bins_carry_no_residual_gpu(precision):
    import cupy

    _check_zero_bins(cupy, precision)


def test_salient_point_finds_a_blob():
    for layout in ("HWC", "CHW"):
        x, pts = _blob_images(6, 96, 128, layout)
        got = saliency.salient_points(x, layout)
        assert got.dtype == np.int32 and got.shape == (6, 2)
        assert np.abs(got - pts).max() <= 3, (got, pts)
        np.testing.assert_array_equal(saliency.salient_points(list(x), layout), got)  # list of samples


@pytest.mark.gpu
def test_salient_points_on_the_gpu():
    import cupy

    x, pts = _blob_images(5, 80, 90)
    assert np.abs(saliency.salient_points(cupy.asarray(x), "HWC").get() - pts).max() <= 3


@pytest.mark.skipif(not HAS_CV_SALIENCY, reason="opencv-contrib saliency module not installed")
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_fine_grained_option(layout):
    # bright 5 x 5 blobs on a flat grey: the point lies on the blob (the test used to check only the shape)
    blobs = [(40, 10), (50, 70)]
    x = np.full((len(blobs), 64, 80, 3), 30, np.uint8)
    for i, (y, xx) in enumerate(blobs):
        x[i, y - 2:y + 3, xx - 2:xx + 3] = 220
    if layout == "CHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    got = saliency.salient_points(x, layout, method="fine-grained")
    assert got.dtype == np.int32 and got.shape == (2, 2)
    assert np.abs(got - np.array(blobs)).max() <= 3, got


def test_spectral_residual_precision_argument():
    g = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=r"precision must be float32 or float64, got float16"):
        saliency.spectral_residual(g, precision=np.float16)


def test_saliency_bad_input():
    # the argument is method= (the messages said saliency=, the DALI operators' name for it)
    with pytest.raises(ValueError, match=r"^method must be one of \['spectral-residual', 'fine-grained'\], "
                                         r"got 'itti'"):
        saliency.salient_points(np.zeros((1, 8, 8, 3), np.uint8), "HWC", method="itti")
    with pytest.raises(ValueError, match=r"images must have 4 dimensions"):
        saliency.salient_points(np.zeros((8, 8, 3), np.uint8), "HWC")
    with pytest.raises(ValueError, match=r"same H x W; sample 0 has shape \(8, 8, 3\) but sample 1 has shape"):
        saliency.salient_points([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], "HWC")


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("k", [2, 3, 5, 9])
def test_box_sizes_equal_dcutmix_and_boxes_sit_on_the_salient_points(k, mode):
    n, h, w = 40, 61, 83
    rng = np.random.default_rng(k)
    centers = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1).astype(np.int32)
    draws = draw_raw(np, rng, n, k, np.full(k, 0.8), mode, 0.9)
    plain = params_from_draws("dcutmix", *draws, h, w)
    sal = params_from_draws("saliency-dcutmix", *draws, h, w, centers)
    sal.validate(n, h, w)  # nested, inside the image, weights = exact areas
    np.testing.assert_array_equal(sal.sources, plain.sources)
    size = lambda b: np.stack([b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)  # noqa: E731
    np.testing.assert_array_equal(size(sal.boxes), size(plain.boxes))
    np.testing.assert_array_equal(sal.weights, plain.weights)
    for i in range(n):
        parent = np.array([0, 0, h, w])
        for j in range(k - 1):
            y0, x0, y1, x1 = sal.boxes[i, j]
            if y1 == y0 and sal.weights[i, 0] == 1.0:
                continue  # unmixed sample
            cy, cx = centers[sal.sources[i, j + 1]]
            for lo, hi, c, plo, phi in ((y0, y1, cy, parent[0], parent[2]), (x0, x1, cx, parent[1], parent[3])):
                want = c - (hi - lo) // 2  # centred ...
                if want < plo:  # ... unless that would leave the parent: then flush with its edge
                    assert lo == plo
                elif want + (hi - lo) > phi:
                    assert hi == phi
                else:
                    assert lo == want
            parent = sal.boxes[i, j]


def test_sample_params_for_saliency_dcutmix():
    x, pts = _blob_images(8, 64, 80)
    p = sample_params("saliency-dcutmix", 8, 64, 80, k=2, alpha=1.0, centers=saliency.salient_points(x, "HWC"),
                      rng=0)
    p.validate(8, 64, 80)
    for i in range(8):  # each box is centred on its source's blob unless shifted by the image edge
        y0, x0, y1, x1 = p.boxes[i, 0]
        src = p.sources[i, 1]
        if y1 > y0 and 0 < y0 and y1 < 64 and 0 < x0 and x1 < 80:
            assert abs((y0 + (y1 - y0) // 2) - pts[src][0]) <= 3 and abs((x0 + (x1 - x0) // 2) - pts[src][1]) <= 3
    out = dali_kmix.mix_images(x, p, "HWC")
    share = np.stack([np.bincount(out[i].ravel() // 10, minlength=8) for i in range(8)]) / out[0].size
    np.testing.assert_allclose(share, dali_kmix.mix_labels(np.arange(8), p, 8), atol=1e-6)


def test_sample_params_saliency_errors():
    with pytest.raises(ValueError, match=r"method='saliency-dcutmix' needs centers=\.\.\. \(the salient point"):
        sample_params("saliency-dcutmix", 4, 8, 8)
    with pytest.raises(ValueError, match=r"centers must be integer \(N=4, 2\), got int64 \(4, 3\)"):
        sample_params("saliency-dcutmix", 4, 8, 8, centers=np.zeros((4, 3), np.int64))
    with pytest.raises(ValueError, match=r"centers must lie inside the 8 x 9 image, got values in \[0, 9\]"):
        sample_params("saliency-dcutmix", 2, 8, 9, centers=np.array([[0, 0], [7, 9]]))
    with pytest.raises(ValueError, match=r"centers are for method='saliency-dcutmix' only, got method='dcutmix'"):
        sample_params("dcutmix", 2, 8, 8, centers=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"needs the salient point of every image"):
        params_from_draws("saliency-dcutmix", *draw_raw(np, np.random.default_rng(0), 2, 3, np.ones(3), "sample", 1.0),
                          8, 8)
    centers = saliency.salient_points(np.zeros((1, 8, 8, 3), np.uint8), "HWC")
    assert isinstance(sample_params("saliency-dcutmix", 1, 8, 8, centers=centers), MixParams)


# --------------------------------------------------------------------------- the operator


def _blob_pipe(k, layout, label_format="sparse", device="cpu", saliency_method="spectral-residual", **kw):
    from nvidia.dali import fn, pipeline_def

    import dali_kmix.dali as kmix

    x, pts = _blob_images(10, 48, 56, layout)

    @pipeline_def(batch_size=10, num_threads=2, device_id=0 if device == "gpu" else None, seed=4)
    def pipe():
        images = fn.external_source(source=lambda: list(x), batch=True, layout=layout)
        labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(10)], batch=True)
        if device == "gpu":
            images = images.gpu()
        return kmix.saliency_dcutmix(images, labels, k=k, num_classes=10, layout=layout, label_format=label_format,
                                     saliency=saliency_method, **kw)

    return pipe(), x, pts


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_operator_labels_match_pixels_and_boxes_hold_the_blobs(k, layout):
    pytest.importorskip("nvidia.dali")
    p, x, pts = _blob_pipe(k, layout)
    p.build()
    for _ in range(2):
        images, idx, w = (t.as_array() for t in p.run())
        for i in range(10):
            share = np.bincount(images[i].ravel() // 10, minlength=10) / images[i].size
            expect = np.zeros(10)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)
        if k == 2:  # box 0 is centred on its source's blob (only the image edge shifts it): the blob shows
            hwc = images if layout == "HWC" else images.transpose(0, 2, 3, 1)
            for i in range(10):
                if w[i, 1] > 0.15 and idx[i, 1] != i:
                    assert ((hwc[i] % 10 == 9) & (hwc[i] // 10 == idx[i, 1])).any()


def test_operator_rejects_fine_grained_on_gpu_and_bad_saliency():
    pytest.importorskip("nvidia.dali")
    with pytest.raises(ValueError, match=r"saliency must be one of"):
        _blob_pipe(3, "HWC", saliency_method="itti")
    with pytest.raises(ValueError, match=r"saliency='fine-grained' \(OpenCV\) runs on the CPU only"):
        _blob_pipe(3, "HWC", device="gpu", saliency_method="fine-grained")


def test_train_pipeline_with_saliency_dcutmix(photo_dir):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.pipelines import DALIMixIterator, imagenet_train_pipeline

    pipe = imagenet_train_pipeline(photo_dir, batch_size=8, mix="saliency-dcutmix", k=3, crop=64, seed=3)
    images, targets = next(iter(DALIMixIterator(pipe)))
    assert images.shape == (8, 3, 64, 64) and targets.shape == (8, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_gpu_operator_labels_match_pixels(layout):
    p, x, pts = _blob_pipe(3, layout, device="gpu")
    p.build()
    images, idx, w = (t.as_cpu().as_array() for t in p.run())
    for i in range(10):
        share = np.bincount(images[i].ravel() // 10, minlength=10) / images[i].size
        expect = np.zeros(10)
        np.add.at(expect, idx[i], w[i])
        np.testing.assert_allclose(share, expect, atol=1e-6)


def _check_strided_batches(xp):
    """salient_points of a transposed batch, of its samples as a list of strided views, and of a column-sliced
    batch: the points of the same images made contiguous first, on the same device (the kernels read samples
    densely)."""
    hwc = np.stack([_object_scene(40, 56, "ramp", "rect", seed)[0] for seed in range(4)])
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    want_hwc = _host(saliency.salient_points(xp.asarray(hwc), "HWC"))
    want_chw = _host(saliency.salient_points(xp.asarray(chw), "CHW"))
    chw_view = xp.asarray(chw).transpose(0, 2, 3, 1)  # HWC, strided
    hwc_view = xp.asarray(hwc).transpose(0, 3, 1, 2)  # CHW, strided
    col_view = xp.asarray(np.repeat(hwc, 2, axis=2))[:, :, ::2]  # every other column: hwc again
    assert not chw_view[0].flags.c_contiguous and not col_view[0].flags.c_contiguous
    for got, want in ((saliency.salient_points(chw_view, "HWC"), want_hwc),
                      (saliency.salient_points(list(chw_view), "HWC"), want_hwc),
                      (saliency.salient_points(list(col_view), "HWC"), want_hwc),
                      (saliency.salient_points(hwc_view, "CHW"), want_chw),
                      (saliency.salient_points(list(hwc_view), "CHW"), want_chw)):
        np.testing.assert_array_equal(_host(got), want)
    np.testing.assert_array_equal(_host(saliency.small_grey(list(col_view), "HWC")),
                                  _host(saliency.small_grey(xp.asarray(hwc), "HWC")))


def test_salient_points_of_strided_batches():
    _check_strided_batches(np)


@pytest.mark.gpu
def test_salient_points_of_strided_cupy_batches():
    import cupy

    _check_strided_batches(cupy)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, bool], ids=["f64", "i32", "i64", "bool"])
def test_salient_points_wrong_dtype_is_the_same_type_error(dtype):
    # issue 20 item 7: was a bare KeyError(dtype('float64')) from the kernel table
    x = np.zeros((2, 8, 8, 3), dtype)
    with pytest.raises(TypeError, match=rf"images must have dtype uint8, float16 or float32, got {np.dtype(dtype)}"):
        saliency.salient_points(x, "HWC")
    with pytest.raises(TypeError, match=rf"images must have dtype uint8, float16 or float32, got {np.dtype(dtype)}"):
        saliency.salient_points(list(x), "HWC")
    with pytest.raises(TypeError, match=r"all samples must have one dtype; sample 0 has uint8 but sample 1 has float32"):
        saliency.salient_points([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], "HWC")


@pytest.mark.parametrize("layout,shape", [("HWC", (0, 0, 3)), ("HWC", (0, 16, 3)), ("CHW", (3, 16, 0)),
                                          ("HWC", (8, 8, 0))], ids=["0x0", "0x16", "chw-16x0", "no-channel"])
def test_salient_points_of_empty_images_is_an_error(layout, shape):
    # used to read outside the image (a clamp to row -1) and return the point (-1, 5)
    with pytest.raises(ValueError, match=rf"sample 0 has shape \({shape[0]}, {shape[1]}, {shape[2]}\)"):
        saliency.salient_points(np.zeros((2,) + shape, np.uint8), layout)


# --------------------------------------------------------------------------- the CPU build's spectral residual


def _maps_both_ways(g):
    """(the CPU build's maps, the NumPy code's float32 maps) of grey images g."""
    from dali_kmix.backends import host_kernels

    if host_kernels() is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    return saliency.spectral_residual(g), saliency._spectral_residual(g, np.float32)


def _scenes():
    """Grey 64 x 64 copies of photographs (framed two ways) and the scenes with exact zero bins."""
    from dali_kmix.apps.data import PHOTOS

    photos = [saliency.small_grey(_framed(_photo(name), 150, 200, frame)[None], "HWC")[0]
              for name in PHOTOS for frame in ("resize", "letterbox")]
    return np.concatenate([np.stack(photos), _zero_bin_images()])


def test_cpu_build_spectral_residual_matches_the_numpy_code():
    # The default CPU path (float32, 64 x 64): the same maps as the NumPy code within a few float32 ulps of 1,
    # the same peak, on photographs, on scenes with exact zero bins and on an all-zero image.
    g = _scenes()
    native, numpy_maps = _maps_both_ways(g)
    assert native.dtype == np.float32 and native.shape == g.shape and np.isfinite(native).all()
    np.testing.assert_allclose(native, numpy_maps, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(native.reshape(len(g), -1).argmax(1), numpy_maps.reshape(len(g), -1).argmax(1))


@pytest.mark.parametrize("h,w", [(16, 16), (32, 128), (128, 64), (1, 1), (2, 4), (4, 2)], ids=lambda v: str(v))
def test_cpu_build_spectral_residual_on_other_power_of_two_grids(h, w):
    rng = np.random.default_rng(h + w)
    g = (rng.random((3, h, w)) * 255).astype(np.float32)
    g[0] = 50.0  # flat: every bin but the DC term is zero
    native, numpy_maps = _maps_both_ways(g)
    np.testing.assert_allclose(native, numpy_maps, rtol=0, atol=2e-6)


def test_other_grids_and_float64_run_the_numpy_code(monkeypatch):
    import types

    from dali_kmix import backends

    called = []
    real = backends.host_kernels()

    def spy():
        if real is None:
            return None
        return types.SimpleNamespace(spectral_residual=lambda *a: called.append(a[0].shape) or
                                     real.spectral_residual(*a))

    monkeypatch.setattr(saliency, "host_kernels", spy)
    g = (np.random.default_rng(2).random((2, 48, 48)) * 255).astype(np.float32)
    want = saliency._spectral_residual(g, np.float32)
    assert np.array_equal(saliency.spectral_residual(g).view(np.uint32), want.view(np.uint32))
    g64 = np.pad(g, ((0, 0), (8, 8), (8, 8)))
    assert np.array_equal(saliency.spectral_residual(g64, precision=np.float64),
                          saliency._spectral_residual(g64, np.float64))
    assert called == []
    saliency.spectral_residual(g64)
    assert called == [(2, 64, 64)] or real is None


def _points_step_by_step(images, layout, work_size=saliency.WORK_SIZE):
    """salient_points as its three steps: the grey copies, their maps, each map's first peak as the centre pixel of
    its cell (what the CPU build's one launch does per image)."""
    sal = saliency.spectral_residual(saliency.small_grey(images, layout, work_size))
    n = len(sal)
    flat = sal.reshape(n, -1).argmax(1)
    iy, ix = flat // work_size, flat % work_size
    h, w = dali_kmix._checks.spatial_size(np.asarray(images[0]).shape, layout)
    return np.stack([np.minimum((2 * iy + 1) * h // (2 * work_size), h - 1),
                     np.minimum((2 * ix + 1) * w // (2 * work_size), w - 1)], axis=1).astype(np.int32)


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("h,w,c", [(224, 224, 3), (97, 131, 3), (50, 40, 1), (33, 70, 4), (1, 1, 3)],
                         ids=["224", "97x131", "grey", "rgba", "1x1"])
def test_cpu_build_salient_points_in_one_launch_are_the_steps_points(dtype, layout, h, w, c):
    # The CPU build finds the points of a batch in one launch (grey copy, map and peak per image); they are the
    # points of its steps one after another, on photographs, noise and flat images, lists and batches.
    from dali_kmix.apps.data import PHOTOS
    from dali_kmix.backends import host_kernels

    if host_kernels() is None:
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")
    rng = np.random.default_rng(h * w + c)
    photos = [_photo(name) for name in PHOTOS]
    x = np.empty((len(photos) + 3, h, w, c), np.float32)
    for i, p in enumerate(photos):
        rows = np.linspace(0, p.shape[0] - 1, h).astype(int)
        cols = np.linspace(0, p.shape[1] - 1, w).astype(int)
        x[i] = p[rows][:, cols][..., np.arange(c) % 3]
    x[-3] = rng.integers(0, 256, (h, w, c))
    x[-2] = 77.0  # flat: only the DC term lives
    x[-1] = 0.0
    x = x.astype(dtype)
    if layout == "CHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    want = _points_step_by_step(list(x), layout)
    got = saliency.salient_points(x, layout)
    assert got.dtype == np.int32 and got.shape == (len(x), 2)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(saliency.salient_points(list(x), layout), want)
    for size in (16, 32):  # other working grids (powers of two)
        np.testing.assert_array_equal(saliency.salient_points(x, layout, work_size=size),
                                      _points_step_by_step(list(x), layout, size))


# --------------------------------------------------------------------------- non-finite pixels

NON_FINITE = [np.nan, np.inf, -np.inf]
NON_FINITE_IDS = ["nan", "+inf", "-inf"]


def _centre_point(h, w, work_size=saliency.WORK_SIZE):
    """The point salient_points gives an image whose map is not finite: the centre cell of the working grid,
    mapped to full resolution as any peak."""
    c = work_size // 2
    return min((2 * c + 1) * h // (2 * work_size), h - 1), min((2 * c + 1) * w // (2 * work_size), w - 1)


def _non_finite_batch(bad, where, dtype, layout, h=50, w=70):
    """Three images: a bright spot at (40, 60); the same with one non-finite element at (3, 4) (``where="one"``)
    or with every element non-finite (``"all"``); a spot at (10, 12). Returns (batch, finite batch: images 0, 2)."""
    x = np.zeros((3, h, w, 3), np.float32)
    x[0, 38:43, 58:63] = 200.0
    x[1] = x[0]
    if where == "one":
        x[1, 3, 4, 0] = bad
    else:
        x[1] = bad
    x[2, 8:13, 10:15] = 150.0
    x = x.astype(dtype)
    if layout == "CHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, x[[0, 2]]


def _points_every_cpu_path(x, layout, work_size, monkeypatch):
    """{path: points} of batch x (and of it as a list of samples): the CPU build where there is one (a power-of-two
    working side), and the NumPy code (the CPU build hidden from saliency, so the NumPy maps and peak search run)."""
    from dali_kmix.backends import host_kernels

    got = {}
    if host_kernels() is not None:
        got["cpu-build"] = saliency.salient_points(x, layout, work_size=work_size)
        got["cpu-build-list"] = saliency.salient_points(list(x), layout, work_size=work_size)
    with monkeypatch.context() as m:
        m.setattr(saliency, "host_kernels", lambda: None)
        got["numpy"] = saliency.salient_points(x, layout, work_size=work_size)
        got["numpy-list"] = saliency.salient_points(list(x), layout, work_size=work_size)
    return got


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's FFT warns of the NaNs it computes with
@pytest.mark.parametrize("work_size", [64, 32, 48])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("where", ["one", "all"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=NON_FINITE_IDS)
def test_non_finite_pixels_give_the_centre_on_every_path(bad, where, dtype, layout, work_size, monkeypatch):
    # A NaN or +-Inf pixel makes the whole map non-finite: the image's point is the centre cell of the working
    # grid, the same on the CPU build and the NumPy code (it was the last cell on one, the first on the other);
    # the finite images of the batch keep their points, bit for bit.
    x, finite = _non_finite_batch(bad, where, dtype, layout)
    h, w = 50, 70
    want_finite = _points_every_cpu_path(finite, layout, work_size, monkeypatch)
    got = _points_every_cpu_path(x, layout, work_size, monkeypatch)
    centre = _centre_point(h, w, work_size)
    assert centre == {64: (25, 35), 32: (25, 36), 48: (25, 35)}[work_size]  # the image's centre, to a cell
    for path, pts in got.items():
        assert pts.dtype == np.int32 and pts.shape == (3, 2), path
        assert tuple(pts[1]) == centre, (path, pts)
        np.testing.assert_array_equal(pts[[0, 2]], want_finite[path], err_msg=path)
        np.testing.assert_array_equal(pts[[0, 2]], want_finite["numpy"], err_msg=path)
    # the finite images' points are where their spots are (not moved by the non-finite neighbour)
    assert np.abs(want_finite["numpy"] - np.array([[40, 60], [10, 12]])).max() <= 3, want_finite


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", NON_FINITE, ids=NON_FINITE_IDS)
def test_non_finite_maps_peak_at_the_centre_cell(bad):
    # The peak search itself, on maps: the NumPy code's (_first_peaks, also the CuPy path's) and the CPU build's
    # (kmix_spectral::spectral_residual's peak index) give the centre cell of a non-finite map, argmax elsewhere.
    from dali_kmix.backends import host_kernels

    rng = np.random.default_rng(5)
    g = (rng.random((3, 32, 16)) * 255).astype(np.float32)
    g[1, 7, 9] = bad
    maps = saliency._spectral_residual(g, np.float32)
    assert not np.isfinite(maps[1]).all() and np.isfinite(maps[[0, 2]]).all()
    want = maps.reshape(3, -1).argmax(1)
    want[1] = 16 * 16 + 8  # (rows // 2, cols // 2)
    np.testing.assert_array_equal(saliency._first_peaks(maps), want)
    kernels = host_kernels()
    if kernels is not None:
        native_maps, peaks = kernels.spectral_residual(g, saliency.smoothing_taps())
        assert not np.isfinite(native_maps[1]).all()
        np.testing.assert_array_equal(peaks, want)


@pytest.mark.gpu
@pytest.mark.parametrize("bad", NON_FINITE, ids=NON_FINITE_IDS)
def test_non_finite_pixels_give_the_centre_on_the_gpu(bad):
    import cupy

    x, _ = _non_finite_batch(bad, "one", np.float32, "HWC")
    want = saliency.salient_points(x, "HWC")
    assert tuple(want[1]) == _centre_point(50, 70)
    np.testing.assert_array_equal(saliency.salient_points(cupy.asarray(x), "HWC").get(), want)
    np.testing.assert_array_equal(saliency.salient_points([cupy.asarray(a) for a in x], "HWC").get(), want)


@pytest.mark.skipif(not HAS_CV_SALIENCY, reason="opencv-contrib saliency module not installed")
@pytest.mark.parametrize("where", ["one", "all"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=NON_FINITE_IDS)
def test_fine_grained_non_finite_images_give_the_centre(bad, where):
    # A NaN or +-Inf pixel used to reach OpenCV through a NaN-scaled uint8 cast (a RuntimeWarning) and gave the
    # point (0, 0); as on the spectral path, such an image's point is its centre, the others are unaffected.
    x, finite = _non_finite_batch(bad, where, np.float32, "HWC")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = saliency.salient_points(x, "HWC", method="fine-grained")
    assert tuple(got[1]) == (25, 35)  # (H // 2, W // 2) of the 50 x 70 image
    np.testing.assert_array_equal(got[[0, 2]], saliency.salient_points(finite, "HWC", method="fine-grained"))
    assert np.abs(got[0] - np.array([40, 60])).max() <= 3, got


@pytest.mark.gpu
def test_fine_grained_on_the_gpu_names_method():
    import cupy

    with pytest.raises(ValueError, match=r"^method='fine-grained' runs on the CPU only"):
        saliency.salient_points(cupy.zeros((1, 8, 8, 3), np.uint8), "HWC", method="fine-grained")


# --------------------------------------------------------------------------- argument checks of the array API


def _corner_blob_batch(n=4, h=96, w=128):
    """HWC uint8 images, dark with one bright 10 x 10 square at rows 6..15, columns 16..25."""
    x = np.zeros((n, h, w, 3), np.uint8)
    x[:, 6:16, 16:26] = 230
    return x


CONTRADICTING = [("HWC", "CHW", (3, 96, 128)), ("HWC", "CHW", (1, 96, 128)), ("CHW", "HWC", (96, 128, 3))]


@pytest.mark.parametrize("func", ["salient_points", "small_grey"])
@pytest.mark.parametrize("layout,looks,shape", CONTRADICTING, ids=["chw-as-hwc", "grey-chw-as-hwc", "hwc-as-chw"])
def test_a_batch_whose_shape_contradicts_layout_is_refused(func, layout, looks, shape):
    # A CHW batch read with the default layout="HWC" gave silently wrong points ((4, 3, 96, 128) -> [[0, 9], ...]
    # instead of the blob's [[11, 21], ...]); the DALI operators refuse such shapes, and so does the array API.
    x = np.zeros((4,) + shape, np.uint8)
    count, where = (shape[0], "first") if looks == "CHW" else (shape[2], "last")
    with pytest.raises(ValueError, match=rf"^images: layout='{layout}' was given but the samples' shape "
                                         rf"\({shape[0]}, {shape[1]}, {shape[2]}\) looks {looks} \({count} "
                                         rf"channels {where}\); .* Pass layout='{looks}'"):
        getattr(saliency, func)(x, layout)


def test_a_chw_batch_given_its_layout_finds_the_points():
    x = _corner_blob_batch()
    want = saliency.salient_points(x, "HWC")
    assert np.abs(want - np.array([11, 21])).max() <= 3, want
    chw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(saliency.salient_points(chw, "CHW"), want)
    np.testing.assert_array_equal(saliency.small_grey(chw, "CHW"), saliency.small_grey(x, "HWC"))
    # a list of samples is DALI's batch: its layout was checked by the operator against the layout the images
    # carry (which may be a shape like this one, trusted there), so it is taken as given
    assert saliency.salient_points(list(chw), "HWC").shape == (4, 2)


@pytest.mark.parametrize("func", ["salient_points", "small_grey"])
@pytest.mark.parametrize("shape,layout,match", [
    ((1, 2, 2**32 + 8, 1), "HWC", r"images: shape \(2, 4294967304, 1\) \(layout HWC\) has an extent of 4294967304; "
                                  r"every extent must be < 2\^31"),
    ((1, 1, 2**29 + 1, 4), "HWC", r"images: shape \(1, 536870913, 4\) \(layout HWC\) has rows of 2147483652 "
                                  r"elements and 1 rows; both must be < 2\^31"),
    ((1, 2, 2**30 + 1, 1), "CHW", r"images: shape \(2, 1073741825, 1\) \(layout CHW\) has rows of 1 elements and "
                                  r"2147483650 rows; both must be < 2\^31"),
], ids=["extent", "hwc-row", "chw-rows"])
def test_images_the_kernels_cannot_index_are_refused(func, shape, layout, match):
    # ctypes truncated such extents to int: (1, 2, 2^32 + 8, 1) gave the point [0, 0]. A broadcast view costs no
    # memory, and the check comes before any copy.
    images = np.broadcast_to(np.uint8(7), shape)
    with pytest.raises(ValueError, match=match):
        getattr(saliency, func)(images, layout)
    with pytest.raises(ValueError, match=match):
        getattr(saliency, func)(list(images), layout)


@pytest.mark.parametrize("images,kwargs,exc,match", [
    (np.zeros((2, 8, 8, 3)), {}, TypeError, r"images must have dtype uint8, float16 or float32, got float64"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], {}, TypeError,
     r"images: all samples must have one dtype; sample 0 has uint8 but sample 1 has float32"),
    (np.zeros((2, 8, 8, 3), np.uint8), dict(layout="hwc"), ValueError,
     r"layout must be 'HWC' or 'CHW' \(upper case\), got 'hwc'"),
    (np.zeros((2, 0, 8, 3), np.uint8), {}, ValueError, r"sample 0 has shape \(0, 8, 3\)"),
    (np.zeros((2, 8, 8, 0), np.uint8), {}, ValueError,
     r"needs at least one channel, but sample 0 has shape \(8, 8, 0\)"),
    (np.zeros((8, 8, 3), np.uint8), {}, ValueError, r"images must have 4 dimensions \(N, H, W, C\)"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], {}, ValueError, r"same H x W"),
    (np.zeros((2, 8, 8, 3), np.uint8), dict(work_size=0), ValueError, r"work_size must be >= 1, got 0"),
    (np.zeros((2, 8, 8, 3), np.uint8), dict(work_size=8.0), TypeError, r"work_size must be an integer, got 8\.0"),
], ids=["f64", "mixed-dtypes", "lower-case-layout", "empty", "no-channel", "3-dims", "shapes", "size-0", "size-float"])
def test_small_grey_checks_its_arguments(images, kwargs, exc, match):
    # used to fail inside: KeyError(dtype('float64')), KeyError('hwc'), RuntimeError (kernel code 1)
    kwargs = dict(dict(layout="HWC"), **kwargs)
    with pytest.raises(exc, match=match):
        saliency.small_grey(images, **kwargs)


def test_small_grey_of_an_empty_batch():
    for images in (np.zeros((0, 8, 8, 3), np.uint8), []):
        g = saliency.small_grey(images, "HWC", 16)
        assert g.dtype == np.float32 and g.shape == (0, 16, 16)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("h,w", [(64, 64), (48, 48), (5, 7), (32, 128)], ids=lambda v: str(v))
def test_spectral_residual_of_an_empty_batch(h, w, precision):
    # used to raise (reshape(0, -1)) on every path but the CPU build's (float32, powers of two)
    sal = saliency.spectral_residual(np.zeros((0, h, w), np.float32), precision=precision)
    assert sal.dtype == np.float32 and sal.shape == (0, h, w)


def test_zero_bins_are_the_same_in_float32_and_float64():
    # A flat image's grey copy carries the resize's float32 rounding (values 0.1 +- 1 ulp): bins of ~eps32 of the
    # DC term. The tolerance was taken from the float64 copy, so in float64 217 of them counted as live and the
    # peak moved to cell 3; from the input's float32 precision, only the DC term is live in both: flat maps.
    g = saliency.small_grey(np.full((1, 150, 200, 1), 0.1, np.float32), "HWC")
    assert len(np.unique(g)) > 1  # the rounding this is about
    maps = {p: saliency.spectral_residual(g, precision=p) for p in (np.float32, np.float64)}
    for p, m in maps.items():
        np.testing.assert_allclose(m, 1.0, rtol=0, atol=1e-6, err_msg=str(p))
    assert saliency._first_peaks(maps[np.float32]) == saliency._first_peaks(maps[np.float64]) == 0
