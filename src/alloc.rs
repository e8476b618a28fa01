//! The global allocator: mimalloc, told to keep the pages it frees.
//!
//! Training allocates and frees tensors of tens of megabytes every step. By default mimalloc hands
//! freed memory back to the kernel after a delay (10 ms in v2, 1 s in v3), and later steps fault
//! it back in, page by page, zeroed by the kernel: 63 000 page faults in an 8 s U-Net training
//! bench (900 with the pages kept) and a quarter of the step's profile in `clear_page_erms`
//! (results/speed.md). Keeping the pages costs nothing the step's peak did not already hold.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h, v2 and v3); libmimalloc-sys
/// names no constant for it. `purge_delay_is_the_option_we_think` checks its documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the kernel (mimalloc's purge delay -1).
pub fn keep_freed_pages() {
    // SAFETY: setting an option is allowed at any time; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_we_think() {
        // SAFETY: reading an option has no preconditions.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(
            default == 10 || default == 1000,
            "mimalloc's purge delay defaults to 10 ms (v2) or 1000 ms (v3), not {default}"
        );
        keep_freed_pages();
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
    }
}
