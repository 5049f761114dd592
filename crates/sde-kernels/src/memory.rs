//! The process allocator's handling of tensor-sized buffers.
//!
//! Every tensor op allocates its output. With glibc's default settings, a buffer over the
//! dynamic mmap threshold, or freed memory at the top of a heap beyond the trim threshold, goes
//! back to the kernel on `free`, so the next op of the same size page-faults its buffer in again,
//! zero-filled: measured on the MNIST-size DDPM++ training step (batch 64, 2 cores), ~680 k page
//! faults per 17 steps, a third of the step's time. [`retain_freed_memory`] keeps freed memory in
//! the process for reuse instead: the same step runs ~1.4x faster with 7x fewer faults. The cost
//! is that the process's resident memory stays at its peak instead of shrinking between steps.

use std::sync::OnceLock;

/// Raises glibc's mmap threshold to its maximum (32 MiB) and its trim threshold to 1 GiB, once
/// per process, so that freed tensor buffers are reused rather than returned to the kernel and
/// faulted in again. Returns whether the settings took effect: `false` on other C libraries
/// (musl, macOS, Windows), whose allocators are left as they are. Idempotent; safe to call from
/// any thread.
pub fn retain_freed_memory() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(tune)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> bool {
    // glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit targets (larger values are refused).
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    // SAFETY: `mallopt` only changes allocator parameters; glibc takes its arena lock while it
    // does, so concurrent `malloc`/`free` on other threads are safe, and both values are within
    // the ranges glibc documents (it returns 0 and changes nothing otherwise).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn takes_effect_on_glibc_and_is_idempotent() {
        let first = super::retain_freed_memory();
        assert_eq!(first, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!(super::retain_freed_memory(), first);
        // the allocator still works for sizes on both sides of the thresholds
        for n in [1usize, 1 << 20, 40 << 20] {
            let v = vec![1u8; n];
            assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), n);
        }
    }
}
