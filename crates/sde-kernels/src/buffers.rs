//! A process-wide pool of `f32` buffers, so that kernels called in a loop (a training step, a
//! sampler step) reuse their memory instead of mapping and unmapping fresh pages each call.
//!
//! The pool keeps at most [`MAX_POOLED_BYTES`]; beyond that, returned buffers are freed.

use std::sync::Mutex;

/// The most the pool holds.
pub const MAX_POOLED_BYTES: usize = 64 << 20;

static POOL: Mutex<(Vec<Vec<f32>>, usize)> = Mutex::new((Vec::new(), 0));

/// An empty buffer with capacity for at least `len` values (a pooled one when there is one).
pub fn take(len: usize) -> Vec<f32> {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    // the smallest pooled buffer that fits
    let best = pool
        .0
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= len)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let mut v = pool.0.swap_remove(i);
            pool.1 -= v.capacity() * 4;
            v.clear();
            v
        }
        None => Vec::with_capacity(len),
    }
}

/// Returns a buffer to the pool (or frees it when the pool is full).
pub fn give(v: Vec<f32>) {
    let bytes = v.capacity() * 4;
    if bytes == 0 {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.1 + bytes <= MAX_POOLED_BYTES {
        pool.1 += bytes;
        pool.0.push(v);
    }
}

/// A pooled buffer of `len` zeros.
pub fn zeros(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.resize(len, 0.0);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_returned_buffer_is_reused() {
        let v = super::zeros(12_345);
        let p = v.as_ptr();
        super::give(v);
        let w = super::take(12_000);
        assert!(w.is_empty() && w.capacity() >= 12_000);
        // another test may have taken it in between; reuse is the usual case, not a guarantee
        let _ = p;
    }
}
