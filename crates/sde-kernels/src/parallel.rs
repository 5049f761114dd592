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
//! - A call made from inside a pool task runs its tasks inline (no nested dispatch).
//! - Work under about [`MIN_TASK_WORK`] floating-point operations per thread runs inline: the
//!   dispatch costs a few microseconds.

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
    candle_core::utils::barrier_pool().execute_chunked(cells.len(), |range| {
        for i in range {
            let mut guard = cells[i].lock().unwrap_or_else(|p| p.into_inner());
            f(i, &mut guard);
        }
    });
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
