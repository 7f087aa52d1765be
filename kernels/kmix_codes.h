// dali_kmix: the codes the host entry points take for an element type and a layout,
// defined once for every C++ file (the kernels through kmix_common.cuh, kmix_host.cpp,
// the DALI plugin) and mirrored once in Python (dali_kmix.backends.cpu: DTYPE_CODES,
// LAYOUT_CODES; tests/test_backends.py checks the two agree).
#pragma once

#define KMIX_HWC 0
#define KMIX_CHW 1

#define KMIX_U8 0
#define KMIX_F16 1
#define KMIX_F32 2
// Record inputs only (sources, boxes): kmix_record.h.
#define KMIX_I32 3

// The blend kernels (kmix_launch_config's kernel; the fused kernel's method): KERNEL_CODES in Python.
#define KMIX_KERNEL_DMIXUP 0
#define KMIX_KERNEL_DCUTMIX 1
#define KMIX_KERNEL_MIX 2
