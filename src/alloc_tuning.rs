//! Keeps the resident size of the process close to what it actually holds.
//!
//! glibc serves allocations of 128 KiB and more with their own `mmap`, but after the
//! first such block is freed it raises that threshold to the freed size, so from then
//! on the exposition's multi-megabyte buffers come from the heap and stay resident
//! after they are freed: each re-rendering leaves the previous one's pages behind.
//! Fixing the threshold keeps large buffers in `mmap`, returned to the OS on free.
//! Measured at 1,000 VMs: 21.8 → 19.5 MiB RSS, the same request rates.

/// The threshold glibc starts with; fixed here instead of drifting upward.
const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Fixes glibc's mmap threshold unless the operator set `MALLOC_MMAP_THRESHOLD_`
/// (glibc's own tunable, which then wins). A no-op on other C libraries.
pub fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; it is called at start-up,
        // before any other thread exists, with a documented option and value.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
    }
}
