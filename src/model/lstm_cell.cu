// The LSTM cell's pointwise work as two CUDA kernels, for aviary's GPU path
// (src/model/lstm_cell.rs). Each is a line-by-line transcription of that file's CPU
// functions `cell_forward` and `cell_backward`, which the CPU tests check against candle's
// autograd on the unfused formulation. Gate order i, f, g, o; one thread per (row, unit).

extern "C" __global__ void lstm_cell_fwd(
    const unsigned int bh,      // B * H
    const unsigned int hidden,  // H
    const float *xp,            // [B, 4H] input projection of this step
    const float *hw,            // [B, 4H] h_prev x W_hh^T
    const float *c_prev,        // [B, H]
    float *out                  // [2, B, H]: h, then c
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= bh) return;
    const unsigned int b = j / hidden, k = j % hidden;
    const unsigned int g0 = b * 4 * hidden + k;
    const float i = 1.0f / (1.0f + expf(-(xp[g0] + hw[g0])));
    const float f = 1.0f / (1.0f + expf(-(xp[g0 + hidden] + hw[g0 + hidden])));
    const float g = tanhf(xp[g0 + 2 * hidden] + hw[g0 + 2 * hidden]);
    const float o = 1.0f / (1.0f + expf(-(xp[g0 + 3 * hidden] + hw[g0 + 3 * hidden])));
    const float c = f * c_prev[j] + i * g;
    out[j] = o * tanhf(c);
    out[bh + j] = c;
}

extern "C" __global__ void lstm_cell_bwd(
    const unsigned int bh,      // B * H
    const unsigned int hidden,  // H
    const float *gates,         // [B, 4H] pre-activation gates (xp + hw)
    const float *c_prev,        // [B, H]
    const float *grad,          // [2, B, H]: dL/dh, then dL/dc
    float *out                  // [B*4H + B*H]: dL/dgates, then dL/dc_prev
) {
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= bh) return;
    const unsigned int b = j / hidden, k = j % hidden;
    const unsigned int g0 = b * 4 * hidden + k;
    const float i = 1.0f / (1.0f + expf(-gates[g0]));
    const float f = 1.0f / (1.0f + expf(-gates[g0 + hidden]));
    const float g = tanhf(gates[g0 + 2 * hidden]);
    const float o = 1.0f / (1.0f + expf(-gates[g0 + 3 * hidden]));
    const float cp = c_prev[j];
    const float tc = tanhf(f * cp + i * g);
    const float dh = grad[j];
    const float dc = grad[bh + j] + dh * o * (1.0f - tc * tc);
    out[g0] = dc * g * i * (1.0f - i);
    out[g0 + hidden] = dc * cp * f * (1.0f - f);
    out[g0 + 2 * hidden] = dc * i * (1.0f - g * g);
    out[g0 + 3 * hidden] = dh * tc * o * (1.0f - o);
    out[4 * bh + j] = dc * f;
}
