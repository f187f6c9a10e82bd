//! The fused LSTM op on CUDA: [`super::lstm_plan`]'s plan run with cuBLAS `gemmEx` on candle's
//! stream and cublas handle, and two kernels of `kernels.cu` (`lstm_seq_cell_fwd`,
//! `lstm_seq_cell_bwd`, transcriptions of `cpu_kernels::cell_forward` / `cell_backward`). A
//! forward pass is 1 + 2T launches, a backward pass 2T + 3: no allocation, graph node or host
//! round trip per step.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::result::gemm_ex;
use candle_core::cuda_backend::cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout};

use super::cuda::{address, base, launch, Arg};

use super::lstm_plan::{self, At, Buf, Dims, Engine, RowGemm, BUFS};

/// What the forward pass keeps on the GPU for the backward pass.
pub struct Saved {
    acts: CudaSlice<f32>,
    c: CudaSlice<f32>,
    tanh_c: CudaSlice<f32>,
}

/// The plan's steps on candle's CUDA stream, over raw addresses of the run's buffers. Every
/// step is queued on the one stream candle uses, so they run in order after the work that
/// wrote the inputs, and before any later free of them (frees are stream-ordered).
struct CudaEngine {
    dev: CudaDevice,
    addr: [u64; BUFS],
}

impl CudaEngine {
    fn new(dev: &CudaDevice) -> candle_core::Result<Self> {
        // cuBLAS runs in the calling thread's current context (a worker thread may not have
        // one yet); kernel launches bind it themselves.
        dev.cuda_stream().context().bind_to_thread().w()?;
        Ok(CudaEngine {
            dev: dev.clone(),
            addr: [0; BUFS],
        })
    }

    fn at(&self, at: At) -> u64 {
        self.addr[at.0 as usize] + (at.1 * 4) as u64
    }

    fn launch(
        &self,
        kernel: &str,
        rows: usize,
        hidden: usize,
        ptrs: &[u64],
    ) -> candle_core::Result<()> {
        let mut args = vec![Arg::U32((rows * hidden) as u32), Arg::U32(hidden as u32)];
        args.extend(ptrs.iter().map(|&p| Arg::U64(p)));
        // SAFETY: two counts, then the buffers' addresses as the kernel in kernels.cu takes
        // them (0 for an absent c_prev); each points into a live buffer of at least
        // rows * hidden (4 * rows * hidden for gates) floats.
        unsafe { launch(&self.dev, kernel, rows * hidden, &args) }
    }
}

impl Engine for CudaEngine {
    fn gemm(&mut self, g: RowGemm, a: At, b: At, c: At) -> candle_core::Result<()> {
        let call = g.cublas();
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1f32, call.beta);
        // TF32 tensor cores only when asked for (`[train] tf32`), as candle's own matmuls.
        let compute = if candle_core::cuda_backend::gemm_reduced_precision_f32() {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let f32_type = cudaDataType_t::CUDA_R_32F;
        let blas = self.dev.cublas_handle();
        // SAFETY: cuBLAS's A is the product's B and its B the product's A (RowGemm::cublas);
        // the addresses and leading dimensions describe contiguous f32 blocks inside live
        // buffers, and C is never the buffer of A or B (Engine::gemm). The handle runs on
        // candle's stream.
        unsafe {
            gemm_ex(
                *blas.handle(),
                op(call.trans_a),
                op(call.trans_b),
                call.m as i32,
                call.n as i32,
                call.k as i32,
                (&alpha as *const f32).cast(),
                self.at(b) as *const std::ffi::c_void,
                f32_type,
                call.lda as i32,
                self.at(a) as *const std::ffi::c_void,
                f32_type,
                call.ldb as i32,
                (&beta as *const f32).cast(),
                self.at(c) as *mut std::ffi::c_void,
                f32_type,
                call.ldc as i32,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("fused-lstm: cuBLAS gemm {g:?}: {e:?}")))
    }

    fn cell_forward(
        &mut self,
        rows: usize,
        hidden: usize,
        gates: At,
        c_prev: Option<At>,
        c: At,
        tanh_c: At,
        h: At,
    ) -> candle_core::Result<()> {
        let c_prev = c_prev.map_or(0, |p| self.at(p));
        let ptrs = [
            self.at(gates),
            c_prev,
            self.at(c),
            self.at(tanh_c),
            self.at(h),
        ];
        self.launch("lstm_seq_cell_fwd", rows, hidden, &ptrs)
    }

    fn cell_backward(
        &mut self,
        rows: usize,
        hidden: usize,
        acts: At,
        c_prev: Option<At>,
        tanh_c: At,
        dh: At,
        dc: At,
        dgates: At,
    ) -> candle_core::Result<()> {
        let c_prev = c_prev.map_or(0, |p| self.at(p));
        let ptrs = [
            self.at(acts),
            c_prev,
            self.at(tanh_c),
            self.at(dh),
            self.at(dc),
            self.at(dgates),
        ];
        self.launch("lstm_seq_cell_bwd", rows, hidden, &ptrs)
    }
}

/// The forward pass over x, w_in, w_hh: returns h [T,B,H] and the state for [`backward`].
pub fn forward(
    inputs: [(&CudaStorage, &Layout); 3],
    d: Dims,
) -> candle_core::Result<(CudaStorage, Saved)> {
    let dev = inputs[0].0.device().clone();
    let (tbh, tbg) = (
        d.steps * d.batch * d.hidden,
        d.steps * d.batch * 4 * d.hidden,
    );
    // SAFETY (the four allocations): the plan writes every element before reading it (the
    // input projection overwrites all of acts; each step's cell writes its c, tanh_c and h).
    let acts = unsafe { dev.alloc::<f32>(tbg)? };
    let c = unsafe { dev.alloc::<f32>(tbh)? };
    let tanh_c = unsafe { dev.alloc::<f32>(tbh)? };
    let h = unsafe { dev.alloc::<f32>(tbh)? };
    let mut e = CudaEngine::new(&dev)?;
    for ((s, l), (buf, what)) in
        inputs
            .into_iter()
            .zip([(Buf::X, "x"), (Buf::WIn, "w_in"), (Buf::WHh, "w_hh")])
    {
        e.addr[buf as usize] = address::<f32>(s, l, "fused-lstm", what)?;
    }
    e.addr[Buf::Acts as usize] = base(&acts, &dev);
    e.addr[Buf::C as usize] = base(&c, &dev);
    e.addr[Buf::TanhC as usize] = base(&tanh_c, &dev);
    e.addr[Buf::H as usize] = base(&h, &dev);
    lstm_plan::forward(&mut e, d)?;
    Ok((
        CudaStorage::wrap_cuda_slice(h, dev),
        Saved { acts, c, tanh_c },
    ))
}

/// The backward pass over x, w_in, w_hh, h and dL/dh with the forward pass's state: returns
/// dx, dw_in and dw_hh end to end, flat.
pub fn backward(
    inputs: [(&CudaStorage, &Layout); 5],
    saved: &Saved,
    d: Dims,
) -> candle_core::Result<CudaStorage> {
    let dev = inputs[0].0.device().clone();
    let (bh, g4) = (d.batch * d.hidden, 4 * d.hidden);
    let (nx, nw) = (d.steps * d.batch * d.inputs, g4 * d.inputs);
    let mut e = CudaEngine::new(&dev)?;
    let names = [
        (Buf::X, "x"),
        (Buf::WIn, "w_in"),
        (Buf::WHh, "w_hh"),
        (Buf::H, "h"),
    ];
    let [x, w_in, w_hh, h, (g_st, g_l)] = inputs;
    for ((s, l), (buf, what)) in [x, w_in, w_hh, h].into_iter().zip(names) {
        e.addr[buf as usize] = address::<f32>(s, l, "fused-lstm", what)?;
    }
    // dL/dh is accumulated into, so the plan gets a copy.
    let Some((g0, g1)) = g_l.contiguous_offsets() else {
        candle_core::bail!("fused-lstm: grad must be contiguous");
    };
    // SAFETY: the copy below fills it.
    let mut dh = unsafe { dev.alloc::<f32>(g1 - g0)? };
    dev.memcpy_dtod(&g_st.as_cuda_slice::<f32>()?.slice(g0..g1), &mut dh)?;
    let dc = dev.alloc_zeros::<f32>(bh)?;
    // SAFETY: each step's cell writes all of its dgates before they are read.
    let dgates = unsafe { dev.alloc::<f32>(d.steps * d.batch * g4)? };
    // Zeroed: with one step there is no dW_hh product.
    let out = dev.alloc_zeros::<f32>(nx + nw + g4 * d.hidden)?;
    e.addr[Buf::Acts as usize] = base(&saved.acts, &dev);
    e.addr[Buf::C as usize] = base(&saved.c, &dev);
    e.addr[Buf::TanhC as usize] = base(&saved.tanh_c, &dev);
    e.addr[Buf::Dh as usize] = base(&dh, &dev);
    e.addr[Buf::Dc as usize] = base(&dc, &dev);
    e.addr[Buf::DGates as usize] = base(&dgates, &dev);
    let out_base = base(&out, &dev);
    e.addr[Buf::Dx as usize] = out_base;
    e.addr[Buf::DWIn as usize] = out_base + (nx * 4) as u64;
    e.addr[Buf::DWHh as usize] = out_base + ((nx + nw) * 4) as u64;
    lstm_plan::backward(&mut e, d)?;
    // The scratch buffers are freed on the stream, after the queued work that uses them.
    drop((dh, dc, dgates));
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
