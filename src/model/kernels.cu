// aviary's CUDA kernels (built to PTX by build.rs with `--features cuda`): the LSTM cell's
// pointwise work for the fused op, dropout's mask, the softmax
// cross-entropy and the RMSprop update. Each is a transcription of a CPU function named beside
// it, which the CPU tests check (and tests/kernels_emulated.rs checks the two against each
// other). Gate order i, f, g, o; one thread per element unless said otherwise.

#include "tensor_list.h"

// The fused op's cell steps (src/model/lstm_cuda.rs), one thread per (row, unit):
// transcriptions of `cell_forward` and `cell_backward` in src/model/kernels.rs, which the
// fused op runs on the CPU. `c_prev` is null at the first step (zeros).

extern "C" __global__ void lstm_seq_cell_fwd(
    const unsigned int n,       // rows * H
    const unsigned int hidden,  // H
    float *gates,               // [rows, 4H]: pre-activations in, activations out
    const float *c_prev,        // [rows, H] or null
    float *c,                   // [rows, H]
    float *tanh_c,              // [rows, H]
    float *h                    // [rows, H]
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const unsigned int r = j / hidden, k = j % hidden;
    float *g = gates + (size_t)r * 4 * hidden;
    const float i = 1.0f / (1.0f + expf(-g[k]));
    const float f = 1.0f / (1.0f + expf(-g[hidden + k]));
    const float gg = tanhf(g[2 * hidden + k]);
    const float o = 1.0f / (1.0f + expf(-g[3 * hidden + k]));
    g[k] = i;
    g[hidden + k] = f;
    g[2 * hidden + k] = gg;
    g[3 * hidden + k] = o;
    const float cv = (c_prev ? f * c_prev[j] : 0.0f) + i * gg;
    const float t = tanhf(cv);
    c[j] = cv;
    tanh_c[j] = t;
    h[j] = o * t;
}

extern "C" __global__ void lstm_seq_cell_bwd(
    const unsigned int n,       // rows * H
    const unsigned int hidden,  // H
    const float *acts,          // [rows, 4H] activated gates
    const float *c_prev,        // [rows, H] or null
    const float *tanh_c,        // [rows, H]
    const float *dh,            // [rows, H] dL/dh_t
    float *dc,                  // [rows, H] dL/dc_t from step t+1 in, dL/dc_{t-1} out
    float *dgates               // [rows, 4H] dL/d(pre-activations)
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const unsigned int r = j / hidden, k = j % hidden;
    const float *a = acts + (size_t)r * 4 * hidden;
    float *d = dgates + (size_t)r * 4 * hidden;
    const float i = a[k], f = a[hidden + k], g = a[2 * hidden + k], o = a[3 * hidden + k];
    const float t = tanh_c[j];
    const float cp = c_prev ? c_prev[j] : 0.0f;
    const float dct = dc[j] + dh[j] * o * (1.0f - t * t);
    d[k] = dct * g * i * (1.0f - i);
    d[hidden + k] = dct * cp * f * (1.0f - f);
    d[2 * hidden + k] = dct * i * (1.0f - g * g);
    d[3 * hidden + k] = dh[j] * t * o * (1.0f - o);
    dc[j] = dct * f;
}

// Dropout's mask (src/model/dropout.rs): splitmix64's finaliser over (key, element); the same
// bits as the CPU's `factor` there.
__device__ __forceinline__ unsigned long long mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

extern "C" __global__ void dropout_mask(
    const unsigned int n,
    const unsigned long long key,
    const float rate,
    const float keep_scale,
    const float *x,
    float *y
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const unsigned long long z = mix(key ^ ((unsigned long long)j * 0x9E3779B97F4A7C15ULL));
    const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
    y[j] = x[j] * (u < rate ? 0.0f : keep_scale);
}

// Softmax cross-entropy (src/model/loss.rs): the forward pass, one block of 256 threads per
// row (max, then sum of exp, then probabilities and the row's loss); the backward pass, one
// thread per logit, writing (p - onehot) * dL/drow over the probabilities.
// Threads per block of the kernels launched by blocks (`launch_blocks` in src/model/cuda.rs).
#define BLOCK 256

// The sum (or maximum) of `v` over the threads of a block.
__device__ float block_reduce(float v, float *shared, bool take_max) {
    const unsigned int tid = threadIdx.x;
    shared[tid] = v;
    __syncthreads();
    for (unsigned int s = BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s) {
            shared[tid] = take_max ? fmaxf(shared[tid], shared[tid + s]) : shared[tid] + shared[tid + s];
        }
        __syncthreads();
    }
    const float r = shared[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void softmax_xent_fwd(
    const unsigned int v,          // classes
    const float *logits,           // [N, V]
    const unsigned int *targets,   // [N]
    float *probs,                  // [N, V]
    float *row_loss                // [N]
) {
    __shared__ float shared[BLOCK];
    const size_t row = blockIdx.x;
    const float *x = logits + row * v;
    float *p = probs + row * v;
    float m = -INFINITY;
    for (unsigned int k = threadIdx.x; k < v; k += BLOCK) m = fmaxf(m, x[k]);
    m = block_reduce(m, shared, true);
    float s = 0.0f;
    for (unsigned int k = threadIdx.x; k < v; k += BLOCK) {
        const float e = expf(x[k] - m);
        p[k] = e;
        s += e;
    }
    s = block_reduce(s, shared, false);
    const float inv = 1.0f / s;
    for (unsigned int k = threadIdx.x; k < v; k += BLOCK) p[k] *= inv;
    if (threadIdx.x == 0) {
        const unsigned int t = targets[row];
        row_loss[row] = t < v ? logf(s) + m - x[t] : INFINITY;
    }
}

extern "C" __global__ void softmax_xent_bwd(
    const unsigned int n,          // N * V
    const unsigned int v,          // classes
    const unsigned int *targets,   // [N]
    const float *grad_rows,        // [N] dL/d(row loss)
    float *probs                   // [N, V]: probabilities in, dL/dlogits out
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const unsigned int r = j / v, k = j % v;
    probs[j] = (probs[j] - (k == targets[r] ? 1.0f : 0.0f)) * grad_rows[r];
}

// RMSprop with clipping by global norm (src/train/optim.rs: `update_cuda`; on the CPU
// `SquareAvgStep` then `ParamStep`) over a list of parameters, two launches for all of them
// where candle would take about forty small ops. Block (x, k) works on parameter k of the
// list. `grad_sq_partials` writes the sum of squares of block x's share of gradient k to
// partials[k * gridDim.x + x]. `rmsprop_step` then sums all the partials in every block, in
// one fixed order (so every block takes the same factor, run after run), takes the clip factor
// min(1, max_norm / (norm + 1e-6)) (PyTorch's clip_grad_norm_), or `fixed_scale` when there
// are no partials, and updates the square average and the parameter in one pass.

extern "C" __global__ void grad_sq_partials(const TensorList t, float *partials) {
    __shared__ float shared[BLOCK];
    const unsigned int k = blockIdx.y, n = t.n[k];
    const float *g = t.g[k];
    float s = 0.0f;
    for (unsigned int j = blockIdx.x * BLOCK + threadIdx.x; j < n; j += gridDim.x * BLOCK) {
        s += g[j] * g[j];
    }
    s = block_reduce(s, shared, false);
    if (threadIdx.x == 0) partials[k * gridDim.x + blockIdx.x] = s;
}

extern "C" __global__ void rmsprop_step(
    const TensorList t,
    const float *partials,         // from grad_sq_partials, for every parameter
    const unsigned int n_partials, // 0: no clipping, the gradients are scaled by fixed_scale
    const float max_norm,
    const float fixed_scale,
    const float lr,
    const float alpha,
    const float eps
) {
    __shared__ float shared[BLOCK];
    float s = 0.0f;
    for (unsigned int j = threadIdx.x; j < n_partials; j += BLOCK) s += partials[j];
    s = block_reduce(s, shared, false);
    const float scale = n_partials == 0
        ? fixed_scale
        : (float)fmin(1.0, (double)max_norm / (sqrt((double)s) + 1e-6));
    const unsigned int k = blockIdx.y, n = t.n[k];
    const float *g = t.g[k];
    float *v = t.v[k], *p = t.p[k];
    for (unsigned int j = blockIdx.x * BLOCK + threadIdx.x; j < n; j += gridDim.x * BLOCK) {
        const float gs = scale * g[j];
        const float vj = alpha * v[j] + (1.0f - alpha) * gs * gs;
        v[j] = vj;
        p[j] -= lr * gs / (sqrtf(vj) + eps);
    }
}
