//! How the server process uses the machine's memory.

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing happens).
///
/// mimalloc asks the kernel for huge pages (`MADV_HUGEPAGE`) on the regions it reserves,
/// and the kernel then zeroes a whole 2 MiB page at the first touch of any byte in it.
/// For a relay that allocates and frees request and chunk buffers all the time, that
/// zeroing was the largest single item of a profile of the file benchmark (45 % of the
/// process's CPU samples in `clear_page_erms`), and the pages count fully towards the
/// RSS however little of them is used (42 MiB more for 10,000 idle connections).
/// Databases with the same allocation pattern recommend the same (Redis, MongoDB).
/// Returns whether huge pages are off now.
pub fn no_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true).is_ok()
            && rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_off_after_the_call() {
        assert!(super::no_transparent_huge_pages());
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
