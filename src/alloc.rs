//! The process allocator (mimalloc) and the one knob training needs from it.
//!
//! mimalloc keeps freed pages for reuse; with glibc's malloc every large tensor buffer of a
//! training step is a fresh mmap, and page faults took a fifth of a CPU training step.
//!
//! By default mimalloc still hands memory that stays free for a second back to the kernel
//! ("purging"). A training step frees and re-allocates the same few hundred MiB of tensors every
//! step, so purged pages come straight back as page faults, each clearing a 2 MiB huge page:
//! `clear_page_erms` took 15% of a forward + backward pass (`benches/train_step.rs`; docs/performance.md).
//! [`KeepFreedMemory`] turns purging off while an epoch runs, so the step's working set stays
//! mapped; it does not grow with the data, only with the batch and the model.

use std::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); libmimalloc-sys does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How many guards are alive, and the purge delay to restore when the last one drops.
static GUARDS: Mutex<(usize, std::os::raw::c_long)> = Mutex::new((0, 0));

/// While any value of this type is alive, mimalloc keeps freed memory mapped instead of
/// returning it to the kernel. Guards nest and may live on several threads at once.
#[must_use = "purging resumes when the guard is dropped"]
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn new() -> Self {
        let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if guards.0 == 0 {
            // SAFETY: mimalloc's option calls are thread-safe and take any value; -1 means
            // "never purge" (mimalloc.h).
            guards.1 = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
        }
        guards.0 += 1;
        KeepFreedMemory(())
    }

    /// The purge delay mimalloc uses now, in milliseconds (-1: never purge).
    pub fn current_purge_delay() -> i64 {
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
    }
}

impl Default for KeepFreedMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        guards.0 -= 1;
        if guards.0 == 0 {
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, guards.1) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore_the_purge_delay() {
        // Other tests in this binary may hold guards too (training tests); wait for none.
        let before = loop {
            let guards = GUARDS.lock().unwrap();
            if guards.0 == 0 {
                break KeepFreedMemory::current_purge_delay();
            }
            drop(guards);
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(before >= 0, "purging is on by default, got delay {before}");
        let outer = KeepFreedMemory::new();
        assert_eq!(KeepFreedMemory::current_purge_delay(), -1);
        let inner = KeepFreedMemory::new();
        drop(outer);
        assert_eq!(
            KeepFreedMemory::current_purge_delay(),
            -1,
            "inner guard still alive"
        );
        drop(inner);
        let after = KeepFreedMemory::current_purge_delay();
        // A training test on another thread may have taken a guard in between.
        assert!(
            after == before || after == -1,
            "restored {after}, expected {before}"
        );
    }
}
