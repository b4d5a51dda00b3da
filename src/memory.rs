//! The process's own memory: what the allocator holds for Brook, what is resident, and giving
//! freed memory back to the operating system.
//!
//! The resident set of a small broker is mostly mapped code (the binary and the C library):
//! shared, clean and reclaimable. The allocator's figures say what is Brook's own data: they
//! are exported as metrics (`brook_heap_bytes`, `brook_resident_bytes`) and read by
//! `cross/footprint.sh`, where emulation inflates the resident set.

/// What the allocator holds, over all its arenas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heap {
    /// Bytes handed out from the allocator's arenas and not yet freed.
    pub in_use: u64,
    /// Large blocks the allocator mapped on their own (128 KiB and up). Only the pages written
    /// are resident: sled's 21.5 MB of zeroed, never-used metrics histograms are here.
    pub mapped: u64,
    /// Bytes freed and kept by the allocator for reuse.
    pub free: u64,
}

/// The allocator's figures: glibc's `mallinfo` (summed over arenas; its counters are 32-bit,
/// which is plenty on a board). `None` where the C library is not glibc.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // `mallinfo` rather than `mallinfo2` (glibc 2.33): the ARM builds may run on older
        // C libraries.
        #[allow(deprecated)]
        // SAFETY: mallinfo takes no arguments and returns a plain struct by value.
        let m = unsafe { libc::mallinfo() };
        let bytes = |v: libc::c_int| u64::from(v.unsigned_abs());
        Some(Heap {
            in_use: bytes(m.uordblks),
            mapped: bytes(m.hblkhd),
            free: bytes(m.fordblks),
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The resident set in bytes (`/proc/self/statm`), on Linux.
pub fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Gives the memory freed since the last call back to the operating system. glibc keeps what is
/// freed in its arenas for reuse, so without this the memory of 2,000 connections that have
/// gone stays with the process; `malloc_trim` returns the free pages of every arena.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)] // the test below is for glibc only
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_heap_grows_with_what_is_allocated() {
        let before = heap().expect("glibc's figures");
        // Kept in sight of the optimiser: an optimised build drops an allocation never read.
        let block = std::hint::black_box(vec![1u8; 8 << 20]);
        let during = heap().expect("heap figures");
        assert!(
            during.in_use + during.mapped >= before.in_use + before.mapped + (8 << 20) - 4096,
            "{before:?} -> {during:?}"
        );
        drop(block);
        assert!(resident().is_some_and(|r| r > 0));
    }
}
