//! aviary's own CUDA kernels (`kernels.cu`, compiled to PTX by build.rs with `--features
//! cuda`): loaded once per device by candle, launched by name with plain values and raw
//! device addresses, one thread per element, on candle's stream (so in order with candle's
//! own work, and before any later free, which is stream-ordered too).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Storage, Tensor};

/// `kernels.cu` as PTX.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// A kernel argument: a count, a device address or a key (`U64`), a float, or a list of
/// parameters.
pub(crate) enum Arg {
    U32(u32),
    U64(u64),
    F32(f32),
    List(Box<TensorList>),
}

/// Parameters per [`TensorList`] (`TENSOR_LIST` in `src/model/tensor_list.h`).
pub(crate) const TENSOR_LIST: usize = 8;

/// Up to [`TENSOR_LIST`] parameters with their gradients and square averages, by device
/// address, passed by value to the RMSprop kernels: `struct TensorList` of
/// `src/model/tensor_list.h`, field for field (the same layout: four arrays, the pointers
/// 8-aligned after 32 bytes of counts).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct TensorList {
    /// Elements of each parameter; 0 past the last.
    pub n: [u32; TENSOR_LIST],
    pub grad: [u64; TENSOR_LIST],
    pub square_avg: [u64; TENSOR_LIST],
    pub param: [u64; TENSOR_LIST],
}

// SAFETY: a plain repr(C) struct of integers, laid out as the kernels' `TensorList`.
unsafe impl DeviceRepr for TensorList {}
// As `static_assert` in tensor_list.h.
const _: () = assert!(std::mem::size_of::<TensorList>() == 224);

/// Launches `name` over `threads` threads with `args`.
///
/// # Safety
/// `args` must match the kernel's parameters in `kernels.cu`, and every address must point
/// into a live buffer large enough for what the kernel reads or writes there.
pub(crate) unsafe fn launch(
    dev: &CudaDevice,
    name: &str,
    threads: usize,
    args: &[Arg],
) -> candle_core::Result<()> {
    // SAFETY: as the caller promises.
    unsafe { launch_with(dev, name, LaunchConfig::for_num_elems(threads as u32), args) }
}

/// Threads per block of [`launch_blocks`] (`BLOCK` in kernels.cu: the block reductions' shared
/// arrays hold this many).
pub(crate) const BLOCK: u32 = 256;

/// Launches `name` over a grid of `blocks` (x, y) blocks of [`BLOCK`] threads (`BLOCK` in
/// `kernels.cu`).
///
/// # Safety
/// As [`launch`].
pub(crate) unsafe fn launch_blocks(
    dev: &CudaDevice,
    name: &str,
    blocks: (usize, usize),
    args: &[Arg],
) -> candle_core::Result<()> {
    let config = LaunchConfig {
        grid_dim: (blocks.0 as u32, blocks.1 as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as the caller promises.
    unsafe { launch_with(dev, name, config, args) }
}

unsafe fn launch_with(
    dev: &CudaDevice,
    name: &str,
    config: LaunchConfig,
    args: &[Arg],
) -> candle_core::Result<()> {
    let func = dev.get_or_load_custom_func(name, "aviary_kernels", PTX)?;
    let mut builder = func.builder();
    for a in args {
        match a {
            Arg::U32(v) => builder.arg(v),
            Arg::U64(v) => builder.arg(v),
            Arg::F32(v) => builder.arg(v),
            Arg::List(v) => builder.arg(v.as_ref()),
        };
    }
    // SAFETY: as the caller promises.
    unsafe { builder.launch(config) }.w()?;
    Ok(())
}

/// The device address of a contiguous tensor argument's first element (of type `T`); `op` and
/// `what` name it in the error.
pub(crate) fn address<T: CudaDType>(
    s: &CudaStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "{op}: {what} must be contiguous, got strides {:?}",
            l.stride()
        );
    };
    let size = std::mem::size_of::<T>();
    Ok(base(s.as_cuda_slice::<T>()?, s.device()) + (start * size) as u64)
}

/// The device address of a contiguous f32 tensor on the GPU, for a kernel that reads or
/// writes it outside candle's ops (the tensor must stay alive until the kernel has run:
/// candle's frees are stream-ordered, so until the launch is queued); `op` and `what` name it
/// in the error.
pub(crate) fn tensor_address(t: &Tensor, op: &str, what: &str) -> candle_core::Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{op}: {what} is not on the GPU");
    };
    address::<f32>(s, layout, op, what)
}

/// The device address of a buffer's first element.
pub(crate) fn base<T>(slice: &CudaSlice<T>, dev: &CudaDevice) -> u64 {
    let stream = dev.cuda_stream();
    let (addr, _record) = slice.device_ptr(&stream);
    addr
}
