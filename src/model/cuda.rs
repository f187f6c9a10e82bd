//! aviary's own CUDA kernels (`kernels.cu`, compiled to PTX by build.rs with `--features
//! cuda`): loaded once per device by candle, launched by name with plain values and raw
//! device addresses, one thread per element, on candle's stream (so in order with candle's
//! own work, and before any later free, which is stream-ordered too).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
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
    unsafe { builder.launch(LaunchConfig::for_num_elems(threads as u32)) }.w()?;
    Ok(())
}

/// The device address of a contiguous f32 tensor argument's first element; `op` and `what`
/// name it in the error.
pub(crate) fn address(
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
    Ok(base(s.as_cuda_slice::<f32>()?, s.device()) + (start * 4) as u64)
}

/// The device address of a buffer's first element.
pub(crate) fn base(slice: &CudaSlice<f32>, dev: &CudaDevice) -> u64 {
    let stream = dev.cuda_stream();
    let (addr, _record) = slice.device_ptr(&stream);
    addr
}
