"""Shared fixtures (real photographs, a JPEG tree) and the GPU marker. Helpers live in _helpers.py.

``gpu``-marked tests skip without a CUDA device, unless ``--require-gpu`` is given (or
``DALI_KMIX_REQUIRE_GPU=1``; ``make test-gpu`` passes it): then a missing device,
CuPy or DALI is a collection error that names what is missing. ``DALI_KMIX_NO_POOL=1`` runs
CuPy without its memory pools (for compute-sanitizer; see ``tests/test_sanitizers.py``).
"""

import numpy as np
import pytest

from dali_kmix.backends import gpu_available
from dali_kmix.backends.build import env_flag, sanitize_requested


def pytest_configure(config):
    # DALI_KMIX_NO_POOL=1 (compute-sanitizer runs): CuPy without its memory pools from the first array on, so every
    # sample a kernel reads is an allocation of its own whose bounds memcheck knows
    from dali_kmix.backends import gpu

    gpu.configure_allocator()


_prebuild = []


def _prebuild_plugin():
    """Build the DALI plugin (the library ``plugin.load()`` loads; cached) in a background thread. The session's
    first DALI operator would otherwise compile it in the foreground (half a minute of one core) while the other core
    is busy with the sanitized suites; built beside test_backends.py, it is in the cache when test_bench.py wants
    it (the build cache's lock makes a foreground build that comes first wait for this one). With the GPU
    backend exactly where ``build()`` would add it, so that it is the same library; no warning from this thread
    (a test recording warnings would see it): a failure here is left for the foreground build to report."""
    import threading

    from dali_kmix.backends import plugin

    def run():
        try:
            plugin.build(gpu=plugin.cuda_toolchain()[0] is not None)
        except Exception:  # noqa: BLE001 - the foreground build reports it
            pass

    try:
        plugin._dali_flags()  # DALI imported here, not in the thread beside the tests' imports
    except Exception:  # noqa: BLE001 - no DALI, or its build flags unreadable: no prebuild (the tests skip or report)
        return
    thread = threading.Thread(target=run, daemon=True, name="kmix-plugin-prebuild")
    thread.start()
    _prebuild.append(thread)


def pytest_runtest_setup(item):
    # Only test_backends.py (first, about 80 s, which never touches the build) runs beside the prebuild: other modules
    # patch what a build reads (the compiler's PATH, the cache folder, build.subprocess.run, plugin.compile_cached).
    if _prebuild and getattr(getattr(item, "module", None), "__name__", "") != "test_backends":
        _prebuild.pop().join()


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    modules = {getattr(getattr(item, "module", None), "__name__", "") for item in session.items}
    if "test_plugin" in modules and not sanitize_requested():
        from dali_kmix.backends import plugin

        if plugin.enabled():
            _prebuild_plugin()
    # The background jobs of the collected tests (the sanitized suites, the studies' smoke runs) start now, one after
    # another in a background thread (tests/_background.py), beside the rest of the session (which keeps mostly one
    # core busy) rather than when their tests come up; each of those tests (last in the session) waits for its own.
    jobs = [(item.name, item.module.BACKGROUND_JOBS[item.name]) for item in session.items
            if _waits_on_a_background_job(item)]
    if jobs:
        import _background

        _background.RUNNER.start(jobs)


def pytest_sessionfinish(session):
    import sys

    if "_background" in sys.modules:
        sys.modules["_background"].RUNNER.stop()
    for thread in _prebuild:  # a session ended early (-x): let the compiler finish its library rather than orphan it
        thread.join()


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true", default=False,
                     help="fail, instead of skipping gpu tests, when no CUDA device or CuPy/DALI cannot load")


def _require_gpu(config):
    return config.getoption("--require-gpu") or env_flag("DALI_KMIX_REQUIRE_GPU")


def gpu_problems():
    """What stops the gpu tests from running here (empty when nothing does)."""
    problems = []
    if env_flag("DALI_KMIX_NO_GPU"):
        problems.append("DALI_KMIX_NO_GPU is set")
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if count == 0:
            problems.append("CuPy found 0 CUDA devices")
    except Exception as exc:  # noqa: BLE001 - the message is what the report needs
        problems.append(f"CuPy cannot use a CUDA device: {type(exc).__name__}: {exc}")
    try:
        from nvidia.dali import backend  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        problems.append(f"DALI cannot load: {type(exc).__name__}: {exc}")
    return problems


def _waits_on_a_background_job(item):
    return item.name in getattr(getattr(item, "module", None), "BACKGROUND_JOBS", {})


def pytest_collection_modifyitems(config, items):
    # The tests that wait for a background job run last: the jobs run from the end of collection
    # (pytest_collection_finish), and a test waiting for one in the middle of the session leaves a core idle that the
    # later modules could use. In their own order, after everything else.
    items[:] = ([i for i in items if not _waits_on_a_background_job(i)]
                + [i for i in items if _waits_on_a_background_job(i)])
    if _require_gpu(config):
        problems = gpu_problems()
        if problems:
            raise pytest.UsageError("--require-gpu: the GPU tests cannot run here: " + "; ".join(problems))
        return
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none found)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: it holds folder names too
            item.add_marker(skip)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """An ImageNet-layout tree of 8 classes x 6 JPEGs made from scikit-image's photographs."""
    from dali_kmix.apps.data import make_photo_tree

    return make_photo_tree(tmp_path_factory.mktemp("photos") / "train", images_per_class=6, size=96)


@pytest.fixture(scope="session")
def photos():
    """Four real photographs, 64x80 RGB uint8 (HWC)."""
    from PIL import Image

    from dali_kmix.apps.data import _load_photo

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(_load_photo(name)).resize((80, 64), Image.BILINEAR)
        out.append(np.asarray(img))
    return np.stack(out)
