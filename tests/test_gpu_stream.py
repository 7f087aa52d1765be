"""On a GPU: dali_kmix's kernels are launched on DALI's stream and ordered after work already queued on it (a control
shows the check fails for a mix on any other stream), and a mixer that raises leaves the process able to run the next
pipeline correctly. (gpu-marked: skipped without a device;
``make test-gpu`` requires one.)"""

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def  # noqa: E402

import dali_kmix.dali as kmix  # noqa: E402

N, H, W, C = 12, 40, 56, 3

# Sleeps about `ns` nanoseconds, then writes base + s into every element of sample s. Every iteration of the upstream
# below uses its own base (1 + N * iteration), so what a consumer not ordered after this kernel reads -- whatever the
# buffer held before: an earlier iteration's values, or fresh memory -- is never a value of this iteration.
_SLOW_FILL = r"""
extern "C" __global__ void slow_fill(float* out, long long per_sample, int n, float base, long long ns) {
  for (long long t = 0; t < ns; t += 1000000) __nanosleep(1000000);
  const long long total = per_sample * n;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x)
    out[i] = base + (float)(i / per_sample);
}
"""
SLEEP_NS = 200_000_000


def _iteration_base(t):
    return 1.0 + N * t


def _fill(out, base, ns):
    """Queue slow_fill on CuPy's current stream."""
    import cupy

    cupy.RawKernel(_SLOW_FILL, "slow_fill")((64,), (256,), (out, np.int64(H * W * C), np.int32(out.shape[0]),
                                                            np.float32(base), np.int64(ns)))


def _slow_upstream(dtype):
    calls = [0]  # DALI calls it once per iteration, in order

    def fill(samples):
        import cupy

        # on the current stream, which DALI binds to its own inside a GPU python_function
        out = cupy.empty((len(samples), H, W, C), cupy.float32)
        _fill(out, _iteration_base(calls[0]), SLEEP_NS)
        calls[0] += 1
        return [a.astype(dtype) for a in out]

    return fill


@pipeline_def(batch_size=N, num_threads=2, device_id=0, seed=5)
def slow_pipe(method, dtype):
    zeros = fn.external_source(source=lambda: [np.zeros((H, W, C), np.uint8)] * N, batch=True, layout="HWC")
    labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(N)], batch=True)
    images = fn.python_function(zeros.gpu(), function=_slow_upstream(dtype), batch_processing=True,
                                device="gpu", output_layouts="HWC")
    op = getattr(kmix, method)
    return op(images, labels, k=3, alpha=0.7, num_classes=N, layout="HWC", label_format="sparse")


def _check_constant_mix(method, images, idx, w, base):
    """Sample s of the upstream is all ``base + s``: the mix of sample i is known from its record (labels = sources).
    Raises AssertionError naming the sample that read anything else (a value of another iteration, or fresh memory)."""
    for i in range(N):
        vals = images[i].astype(np.float64) - base
        assert ((vals >= -1e-3) & (vals <= N - 1 + 1e-3)).all(), \
            f"sample {i} read values that are not this iteration's: the mix was not ordered after the upstream"
        if method == "dcutmix":
            share = np.bincount(np.rint(vals).astype(np.int64).ravel(), minlength=N) / images[i].size
            expect = np.zeros(N)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)
        else:
            np.testing.assert_allclose(images[i], base + (w[i] * idx[i]).sum(), rtol=1e-5)


def _outputs(pipe, iters=3):
    """``(images, label_idx, label_w, base)`` of each iteration."""
    pipe.build()
    for t in range(iters):
        yield [r.as_cpu().as_array() for r in pipe.run()] + [_iteration_base(t)]


@pytest.fixture
def launch_streams(monkeypatch):
    """``[(CuPy's current stream, DALI's stream)]`` at every dali_kmix kernel launch."""
    import cupy
    import nvidia.dali.python_function_plugin as plugin

    from dali_kmix.backends import gpu

    seen = []
    real_get = gpu.KernelModule.get_function

    def get_function(self, expr):
        fn_ = real_get(self, expr)

        def launch(*a, **kw):
            seen.append((cupy.cuda.get_current_stream().ptr, int(plugin.current_dali_stream())))
            return fn_(*a, **kw)

        return launch

    monkeypatch.setattr(gpu.KernelModule, "get_function", get_function)
    return seen


@pytest.mark.gpu
@pytest.mark.parametrize("method,dtype", [("dcutmix", np.uint8), ("dmixup", np.float32)])
def test_mixing_is_ordered_after_slow_work_queued_on_dalis_stream(method, dtype, launch_streams):
    for images, idx, w, base in _outputs(slow_pipe(method, dtype)):
        _check_constant_mix(method, images, idx, w, base)
    assert launch_streams and all(ours == dali and dali != 0 for ours, dali in launch_streams), launch_streams


@pytest.mark.gpu
@pytest.mark.parametrize("consumer", ["producer's stream", "another stream", "legacy default stream"])
def test_the_ordering_check_fails_for_a_mix_not_ordered_after_the_upstream(consumer):
    # The check above, outside DALI: the buffer holds iteration 0's values; iteration 1's are written on a producer
    # stream behind a 0.2 s sleep; the same DCutMix launched on the producer's stream passes the check, launched on
    # another stream (or the legacy default stream, which does not wait for a non-blocking one) it fails.
    import cupy

    from dali_kmix.backends import gpu
    from dali_kmix.sampling import sample_params

    producer = cupy.cuda.Stream(non_blocking=True)
    p = sample_params("dcutmix", N, H, W, k=3, alpha=0.7, rng=0)
    pd = p.to_cupy()
    buf = cupy.empty((N, H, W, C), cupy.float32)
    outs = [cupy.empty((H, W, C), cupy.float32) for _ in range(N)]
    with producer:
        _fill(buf, _iteration_base(0), 0)
    cupy.cuda.Device().synchronize()
    with producer:
        _fill(buf, _iteration_base(1), SLEEP_NS)
    stream = {"producer's stream": producer, "another stream": cupy.cuda.Stream(non_blocking=True),
              "legacy default stream": cupy.cuda.Stream.null}[consumer]
    with stream:
        gpu.dcutmix(list(buf), outs, pd.sources, pd.boxes, "HWC")
    cupy.cuda.Device().synchronize()
    images = cupy.stack(outs).get()
    if consumer == "producer's stream":
        _check_constant_mix("dcutmix", images, p.sources, p.weights, _iteration_base(1))
    else:
        with pytest.raises(AssertionError, match="not this iteration's"):
            _check_constant_mix("dcutmix", images, p.sources, p.weights, _iteration_base(1))


FAILURES = {
    # where the error is raised: the CPU label check in front of the GPU mixer, or inside the GPU python_function
    # (labels on the device; images of different sizes), where DALI 2.4's stream wrapper is involved
    "bad-label-checked-on-host": (False, [(4, 4, 3)] * 3, (1, 12, 0),
                                  r"labels must lie in \[0, num_classes=10\), got label 12"),
    "bad-label-checked-on-device": (True, [(4, 4, 3)] * 3, (1, 12, 0),
                                    r"labels must lie in \[0, num_classes=10\), got label 12"),
    "image-sizes-differ-on-device": (True, [(4, 4, 3), (5, 4, 3), (4, 4, 3)], (1, 2, 0),
                                     r"sample 1 has shape \(5, 4, 3\)"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("labels_on_gpu,shapes,values,match", list(FAILURES.values()), ids=list(FAILURES))
def test_a_failing_gpu_mixer_leaves_the_process_usable(labels_on_gpu, shapes, values, match):
    @pipeline_def(batch_size=3, num_threads=1, device_id=0, seed=0)
    def bad():
        x = fn.external_source(source=lambda: [np.zeros(sh, np.uint8) for sh in shapes], batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([v], np.int32) for v in values], batch=True)
        return kmix.dcutmix(x.gpu(), y.gpu() if labels_on_gpu else y, k=3, num_classes=10, layout="HWC")

    p = bad()
    p.build()
    with pytest.raises(RuntimeError, match=match):
        p.run()
    del p
    import gc

    gc.collect()  # a Stream object that kept DALI's stream would destroy it here
    # the same process, a new pipeline: runs and gives the right output
    for images, idx, w, base in _outputs(slow_pipe("dcutmix", np.uint8)):
        _check_constant_mix("dcutmix", images, idx, w, base)
