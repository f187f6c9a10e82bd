//! aviary's own CUDA kernels (`kernels.cu`, compiled to PTX by build.rs with `--features
//! cuda`): loaded once per device by candle, launched by name with plain values and raw
//! device addresses, one thread per element, on candle's stream (so in order with candle's
//! own work, and before any later free, which is stream-ordered too).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout};

/// `kernels.cu` as PTX.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// A kernel argument: a count, a device address or a key (`U64`), or a float.
pub(crate) enum Arg {
    U32(u32),
    U64(u64),
    F32(f32),
}

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

/// Threads per block of [`launch_blocks`]: `softmax_xent_fwd`'s shared arrays hold this many.
const BLOCK: u32 = 256;

/// Launches `name` with `blocks` blocks of [`BLOCK`] threads (one block per row).
///
/// # Safety
/// As [`launch`].
pub(crate) unsafe fn launch_blocks(
    dev: &CudaDevice,
    name: &str,
    blocks: usize,
    args: &[Arg],
) -> candle_core::Result<()> {
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
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

/// The device address of a buffer's first element.
pub(crate) fn base<T>(slice: &CudaSlice<T>, dev: &CudaDevice) -> u64 {
    let stream = dev.cuda_stream();
    let (addr, _record) = slice.device_ptr(&stream);
    addr
}
