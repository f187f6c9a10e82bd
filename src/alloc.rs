//! The memory allocator of every aviary binary (the app, its tests and benchmarks): mimalloc,
//! set to keep freed memory mapped.

// Training allocates and frees the same large buffers every step; the system allocator hands
// them back to the OS and page-faults them in again each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`): how long freed memory stays mapped.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed memory back to the OS. With mimalloc's default (purge after 10 ms) a
/// training step of the reference model faults about 2,000 pages back in (8 MB), every step;
/// with this, none. Call once at start.
pub fn keep_freed_memory() {
    // SAFETY: options may be set at any time; -1 means "never purge".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
