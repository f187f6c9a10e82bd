// Up to TENSOR_LIST parameters for one launch of the RMSprop kernels in kernels.cu, passed by
// value. Mirrored by `TensorList` in src/model/cuda.rs (repr(C): the same layout) and built
// by tests/cuda_emu/harness.cpp.
#pragma once

#define TENSOR_LIST 8

struct TensorList {
    unsigned int n[TENSOR_LIST];   // elements of each (0 past the last)
    const float *g[TENSOR_LIST];   // gradients
    float *v[TENSOR_LIST];         // square averages, updated in place
    float *p[TENSOR_LIST];         // parameters, updated in place
};

// 8 counts, then 3 x 8 addresses (as `TensorList` in src/model/cuda.rs).
static_assert(sizeof(TensorList) == 224, "TensorList layout");
