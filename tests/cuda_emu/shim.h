// Just enough of CUDA's C++ dialect to compile src/model/kernels.cu as ordinary C++ for the
// CPU, so tests/kernels_emulated.rs can run each kernel's code on a machine without a GPU:
// each emulated thread sets its own threadIdx/blockIdx, __shared__ arrays are shared by the
// threads of a block (blocks run one after another), __syncthreads is a barrier.
#pragma once
#include <math.h>
#include <stddef.h>

struct EmuDim {
    unsigned int x, y, z;
};
extern thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
