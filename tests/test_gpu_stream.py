"""On a GPU: dali_kmix's kernels are ordered after work already queued on DALI's stream, and a mixer that
raises leaves the process able to run the next pipeline correctly. (gpu-marked: skipped without a device;
``make test-gpu`` requires one.)"""

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def  # noqa: E402

import dali_kmix.dali as kmix  # noqa: E402

N, H, W, C = 12, 40, 56, 3

# Sleeps about `ns` nanoseconds in every thread, then writes value s into every element of sample s. A consumer
# not ordered after it reads the sentinel the buffer was filled with before.
_SLOW_FILL = r"""
extern "C" __global__ void slow_fill(float* out, long long per_sample, int n, long long ns) {
  for (long long t = 0; t < ns; t += 1000000) __nanosleep(1000000);
  const long long total = per_sample * n;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x)
    out[i] = (float)(i / per_sample);
}
"""
SENTINEL = 255.0


def _slow_upstream(dtype):
    def fill(samples):
        import cupy

        kern = cupy.RawKernel(_SLOW_FILL, "slow_fill")
        # both on the current stream, which DALI binds to its own inside a GPU python_function
        out = cupy.full((len(samples), H, W, C), SENTINEL, cupy.float32)
        kern((64,), (256,), (out, np.int64(H * W * C), np.int32(len(samples)), np.int64(200_000_000)))
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


def _check_constant_mix(method, images, idx, w):
    """Sample s of the upstream is all s: the mix of sample i is known from its record (labels = sources)."""
    for i in range(N):
        assert not (images[i] == SENTINEL).any(), f"sample {i} read the buffer before the upstream wrote it"
        if method == "dcutmix":
            share = np.bincount(images[i].astype(np.int64).ravel(), minlength=N) / images[i].size
            expect = np.zeros(N)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)
        else:
            np.testing.assert_allclose(images[i], (w[i] * idx[i]).sum(), rtol=1e-5)


def _outputs(pipe, iters=2):
    pipe.build()
    for _ in range(iters):
        yield [r.as_cpu().as_array() for r in pipe.run()]


@pytest.mark.gpu
@pytest.mark.parametrize("method,dtype", [("dcutmix", np.uint8), ("dmixup", np.float32)])
def test_mixing_is_ordered_after_slow_work_queued_on_dalis_stream(method, dtype):
    for images, idx, w in _outputs(slow_pipe(method, dtype)):
        _check_constant_mix(method, images, idx, w)


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
    for images, idx, w in _outputs(slow_pipe("dcutmix", np.uint8)):
        _check_constant_mix("dcutmix", images, idx, w)
