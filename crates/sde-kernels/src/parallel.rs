//! The workspace's threading policy, in one place.
//!
//! - Work is cut into **tasks whose layout depends only on the problem size**, never on the
//!   number of threads; each task writes its own outputs, and anything summed across tasks is
//!   summed in task order by the caller. Results are therefore bit-identical on 1 and on N
//!   threads.
//! - Tasks run on **candle's CPU pool** (`candle_core::utils::barrier_pool`), the pool candle's
//!   own CPU ops use: one set of worker threads per process, sized by candle
//!   (`RAYON_NUM_THREADS`, else the available parallelism). Two pools on the same cores make
//!   the idle one's spinning threads compete with the busy one's.
//! - A call made from inside a pool task (on a worker or on the dispatching thread) runs its
//!   tasks inline (no nested dispatch).
//! - Work under about [`MIN_TASK_WORK`] floating-point operations per thread runs inline: the
//!   dispatch costs a few microseconds.
//!
//! The helpers, from the most to the least structured: [`for_each_mut`] (one task per item),
//! [`for_each_chunk_run`] (disjoint chunks of one output, in runs of consecutive chunks), and
//! [`run_tasks`] (bare task indices, for kernels whose tasks write through the crate-internal
//! `SharedMut`: the strided or uninitialised outputs that safe splitting cannot express).

use std::sync::{Mutex, OnceLock};

/// Below this many floating-point operations per thread a call runs on the calling thread.
pub const MIN_TASK_WORK: usize = 200_000;

/// The number of threads kernels use (candle's CPU thread count, read once: candle's own
/// function parses `/proc/cpuinfo` on every call).
pub fn num_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// Runs `f(i, &mut items[i])` for every item, on the pool when `total_work` (floating-point
/// operations over all items) is worth splitting, else in order on this thread.
///
/// Each item is reached by exactly one task, so `f` may write it freely; `f` must not depend
/// on which thread runs it (the policy above).
pub fn for_each_mut<T: Send>(items: &mut [T], total_work: usize, f: impl Fn(usize, &mut T) + Sync) {
    let threads = num_threads();
    if threads == 1 || items.len() <= 1 || total_work < MIN_TASK_WORK * 2 {
        for (i, it) in items.iter_mut().enumerate() {
            f(i, it);
        }
        return;
    }
    // One uncontended lock per item hands each task its `&mut` without unsafe code.
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    on_pool(cells.len(), |range| {
        for i in range {
            let mut guard = cells[i].lock().unwrap_or_else(|p| p.into_inner());
            f(i, &mut guard);
        }
    });
}

/// Splits `out` into chunks of `chunk` values (the last one shorter when `chunk` does not divide
/// the length) and runs `f(chunks, run)` for runs of consecutive chunks: `chunks` the indices of
/// the run's chunks, `run` their values. On the pool when `total_work` (floating-point operations
/// over all of `out`) is worth splitting, else as one run on this thread.
///
/// The runs are for scheduling only (at most [`MAX_RUNS`], of `n_chunks / MAX_RUNS` chunks or
/// one more): `f` must compute each chunk from its index and inputs alone, so that the result
/// does not depend on how the chunks were grouped. A run is where a task keeps its scratch
/// memory. Panics if `chunk` is 0 while `out` is not empty.
pub fn for_each_chunk_run<T: Send>(
    out: &mut [T],
    chunk: usize,
    total_work: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync,
) {
    if out.is_empty() {
        return;
    }
    assert!(
        chunk > 0,
        "for_each_chunk_run: empty chunks of a non-empty output"
    );
    let n_chunks = out.len().div_ceil(chunk);
    if num_threads() == 1 || n_chunks == 1 || total_work < MIN_TASK_WORK * 2 {
        return f(0..n_chunks, out);
    }
    // runs of whole chunks, as value ranges; back to chunk indices for `f`
    let runs = row_groups(out.len(), chunk, MAX_RUNS);
    for_each_range_mut(out, &runs, total_work, |r, run| {
        f(r.start / chunk..r.end.div_ceil(chunk), run)
    });
}

/// The most runs [`for_each_chunk_run`] makes (a multiple of every usual thread count, so that the
/// runs share out evenly).
pub const MAX_RUNS: usize = 48;

/// The number of threads candle's pool runs a call on (its workers and the calling thread):
/// the number of blocks a kernel cuts work into when it wants one block per thread.
pub fn pool_width() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| candle_core::utils::barrier_pool().n_workers() + 1)
}

/// Runs `f(0)`, …, `f(n_tasks - 1)` on candle's pool (inline from inside a pool task, or when
/// `n_tasks <= 1`). Tasks share nothing but what `f` captures: each must write only memory that
/// no other task reads or writes (in this crate, through `SharedMut`, whose contract says so).
pub fn run_tasks(n_tasks: usize, f: impl Fn(usize) + Sync) {
    if n_tasks <= 1 {
        (0..n_tasks).for_each(f);
        return;
    }
    on_pool(n_tasks, |range| range.for_each(&f));
}

thread_local! {
    /// Whether this thread is inside a pool dispatch it made (it runs a share of the tasks).
    static DISPATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `execute_chunked` on candle's pool, or inline when called from inside a task: candle runs a
/// nested call from one of its workers inline itself, but a nested call from the thread that
/// dispatched (it runs a share of the tasks) would wait on the pool's call lock for ever.
fn on_pool(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if DISPATCHING.with(|d| d.get()) {
        return f(0..n);
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DISPATCHING.with(|d| d.set(false));
        }
    }
    DISPATCHING.with(|d| d.set(true));
    let _reset = Reset;
    candle_core::utils::barrier_pool().execute_chunked(n, f);
}

/// The address of a buffer that the tasks of one [`run_tasks`] call write in disjoint parts
/// (columns of a matrix, strided planes, uninitialised output): the one pattern that
/// `&mut`-splitting cannot express. Crate-internal; every dereference is `unsafe` and its caller
/// argues the contract:
///
/// while the tasks run, every element behind the pointer is written by at most one task and
/// read by no other, and no `&mut` to memory another task touches is live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedMut<T>(*mut T);

// SAFETY: a `SharedMut` is an address; moving or sharing it between threads does nothing by
// itself. Every access through it is an `unsafe` operation whose caller guarantees the contract
// above (accesses of different tasks are disjoint, or reads of memory nobody writes), which is
// what a `&mut [T]` split into disjoint parts and sent to the tasks would allow: that needs
// `T: Send`.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as for `Send`: `&SharedMut` only hands out the address; the accesses made with it are
// disjoint per task by the contract.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The address of `s`'s first element, for tasks that write disjoint parts of `s` while the
    /// borrow lasts (the caller keeps `s` borrowed until the tasks are done).
    pub(crate) fn new(s: &mut [T]) -> Self {
        Self(s.as_mut_ptr())
    }

    /// The address of `s`'s first (possibly uninitialised) element.
    pub(crate) fn new_uninit(s: &mut [std::mem::MaybeUninit<T>]) -> Self {
        Self(s.as_mut_ptr().cast())
    }

    /// The address `off` elements further.
    ///
    /// # Safety
    /// `off` must stay inside the buffer (or one past its end).
    pub(crate) unsafe fn add(self, off: usize) -> Self {
        // SAFETY: the caller keeps the offset inside the allocation.
        Self(unsafe { self.0.add(off) })
    }

    /// The raw address.
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }

    /// `len` elements from the address, as a slice.
    ///
    /// # Safety
    /// `[0, len)` from the address must be inside the buffer, initialised, and touched by no
    /// other task while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(self, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's contract above.
        unsafe { std::slice::from_raw_parts_mut(self.0, len) }
    }
}

/// `n_rows` split into contiguous blocks of `block` rows (the last one shorter), grouped into at
/// most `max_groups` runs of consecutive blocks: the task layout of a row-parallel kernel. The
/// groups depend on `n_rows` only.
pub fn row_groups(n_rows: usize, block: usize, max_groups: usize) -> Vec<std::ops::Range<usize>> {
    let block = block.max(1);
    let n_blocks = n_rows.div_ceil(block);
    let g = n_blocks.min(max_groups.max(1));
    (0..g)
        .map(|k| {
            let (b0, b1) = (k * n_blocks / g, (k + 1) * n_blocks / g);
            (b0 * block).min(n_rows)..(b1 * block).min(n_rows)
        })
        .collect()
}

/// Runs `f(range, &mut data[range])` for each of `ranges`, consecutive ranges that cover `data`
/// in order (e.g. [`row_groups`] of its length), under [`for_each_mut`]'s policy: on the pool
/// when `total_work` is worth splitting, else in order on this thread. With a layout that
/// depends on `data.len()` only and an `f` that derives each value from its position, the
/// result does not depend on the thread count.
///
/// # Panics
/// If `ranges` do not tile `0..data.len()` in order (a caller's bug, not an input error).
pub fn for_each_range_mut<T: Send>(
    data: &mut [T],
    ranges: &[std::ops::Range<usize>],
    total_work: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync,
) {
    let mut tasks = Vec::with_capacity(ranges.len());
    let mut rest = data;
    let mut next = 0;
    for r in ranges {
        assert!(
            r.start == next && r.end >= r.start && r.len() <= rest.len(),
            "for_each_range_mut: {r:?} does not follow {next} in a slice of {}",
            next + rest.len()
        );
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
        tasks.push((r.clone(), head));
        rest = tail;
        next = r.end;
    }
    assert!(
        rest.is_empty(),
        "for_each_range_mut: the ranges end at {next}, before the end of the slice"
    );
    for_each_mut(&mut tasks, total_work, |_, (r, chunk)| f(r.clone(), chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_groups_partition_the_rows_in_order() {
        for n in [0usize, 1, 5, 127, 128, 129, 512, 3000, 100_000] {
            let g = row_groups(n, 128, 16);
            assert!(g.len() <= 16);
            let mut next = 0;
            for r in &g {
                assert_eq!(r.start, next);
                assert!(r.end > r.start);
                assert!(r.start % 128 == 0);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn for_each_chunk_run_covers_every_chunk_once_in_order() {
        for (len, chunk) in [
            (0usize, 3usize),
            (1, 1),
            (10, 3),
            (9, 3),
            (1000, 7),
            (100_000, 1),
        ] {
            let mut v = vec![usize::MAX; len];
            for_each_chunk_run(&mut v, chunk, usize::MAX, |chunks, run| {
                assert_eq!(
                    run.len(),
                    (chunks.end * chunk).min(len) - chunks.start * chunk
                );
                for (k, c) in run.chunks_mut(chunk).enumerate() {
                    c.fill(chunks.start + k);
                }
            });
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i / chunk),
                "{len} {chunk}"
            );
        }
        // small work runs inline, as one run
        let mut v = vec![0u8; 50];
        let runs = std::sync::atomic::AtomicUsize::new(0);
        for_each_chunk_run(&mut v, 5, 10, |c, _| {
            assert_eq!(c, 0..10);
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(runs.into_inner(), 1);
    }

    #[test]
    fn run_tasks_writes_disjoint_parts_through_shared_mut() {
        for n in [0usize, 1, 2, 5, 64] {
            let mut v = vec![0usize; n * 3];
            let p = SharedMut::new(&mut v);
            run_tasks(n, |t| {
                // SAFETY: task t alone writes v[3t .. 3t + 3], inside v.
                let part = unsafe { p.add(3 * t).slice(3) };
                part.fill(t + 1);
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i / 3 + 1));
        }
        assert!(pool_width() >= 1);
    }

    #[test]
    fn nested_calls_run_inline_on_every_thread() {
        let mut outer = vec![0usize; 8];
        for_each_mut(&mut outer, usize::MAX, |i, x| {
            let mut inner = vec![0usize; 8];
            for_each_mut(&mut inner, usize::MAX, |j, y| *y = j);
            run_tasks(3, |_| {});
            *x = i + inner.iter().sum::<usize>();
        });
        assert!(outer.iter().enumerate().all(|(i, &x)| x == i + 28));
    }

    #[test]
    fn for_each_mut_reaches_every_item_once() {
        let mut v = vec![0usize; 37];
        for_each_mut(&mut v, usize::MAX, |i, x| *x += i + 1);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
    }

    #[test]
    fn for_each_range_mut_hands_out_each_range_once() {
        for n in [0usize, 1, 100, 5000] {
            let mut v = vec![0usize; n];
            let ranges = row_groups(n, 64, 16);
            for_each_range_mut(&mut v, &ranges, usize::MAX, |r, chunk| {
                assert_eq!(r.len(), chunk.len());
                for (i, x) in r.zip(chunk) {
                    *x += i + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
        }
    }

    #[test]
    #[should_panic(expected = "before the end")]
    fn for_each_range_mut_rejects_ranges_that_miss_elements() {
        let mut v = vec![0u8; 10];
        for_each_range_mut(&mut v, &[0..4, 4..8], 0, |_, _| {});
    }
}
