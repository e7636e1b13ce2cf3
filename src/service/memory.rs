//! Handing the memory the allocator holds free back to the operating system after a model
//! version loads or unloads.
//!
//! Building a session parses the whole ONNX file, and glibc keeps what that freed: a heap
//! returns free pages to the system only from its top, and once a large block has been freed
//! it raises its mmap threshold, so later large blocks come from the heaps too. A ResNet-50
//! server held 315 MiB at READY, of which trimming returned 177 MiB, most of it from the
//! loading thread's heap (docs/PERFORMANCE.md, "Where the memory goes"). Only loads and
//! unloads trim: trimming after batches would make the next batch fault its buffers in again
//! (+2.5 ms a run, measured).

use std::time::Instant;

/// Returns the free memory in the allocator's heaps to the operating system (glibc only; a
/// no-op elsewhere). Runs on a blocking thread: it walks every heap under its lock.
pub async fn release_free() {
    let started = Instant::now();
    if tokio::task::spawn_blocking(trim).await.is_ok() {
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "free heap memory returned to the system"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes no pointers and locks each heap while it releases that
    // heap's free pages; glibc allows it from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident memory of this process, in bytes.
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * usize::try_from(page).unwrap()
    }

    #[tokio::test]
    async fn freed_heap_memory_goes_back_to_the_system() {
        // 96 MiB in blocks below the mmap threshold, all freed but the last, which keeps
        // the heap's top in use: glibc's free alone returns none of it.
        let mut blocks: Vec<Box<[u8]>> = (0..96 * 256)
            .map(|index| vec![index as u8; 4096].into_boxed_slice())
            .collect();
        let last = blocks.pop();
        drop(blocks);
        let before = resident();
        release_free().await;
        let after = resident();
        assert!(
            before.saturating_sub(after) > 64 << 20,
            "resident {before} bytes before, {after} after"
        );
        drop(last);
    }
}
