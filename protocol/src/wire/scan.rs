//! Finding a byte in what was read: newlines and the sentinel.
//!
//! The `memchr` crate picks AVX2 at run time, and its first search asks the
//! CPU which features it has, once per process. On a virtual machine each
//! `cpuid` traps to the hypervisor: that first search cost a fresh
//! `virtomate` about 50 µs here, a twentieth of its CPU through a control
//! master. SSE2 is part of x86-64 itself, so its search needs no asking,
//! and it is still far faster than anything done with the bytes found.

/// The position of the first `byte` in `haystack`.
pub(crate) fn find(byte: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(finder) = memchr::arch::x86_64::sse2::memchr::One::new(byte) {
        return finder.find(haystack);
    }
    memchr::memchr(byte, haystack)
}

/// The position of the last `byte` in `haystack`.
pub(crate) fn rfind(byte: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(finder) = memchr::arch::x86_64::sse2::memchr::One::new(byte) {
        return finder.rfind(haystack);
    }
    memchr::memrchr(byte, haystack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_and_the_last_of_a_byte_at_any_length() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 64, 65, 1000] {
            let mut haystack = vec![b'a'; len];
            assert_eq!(find(b'\n', &haystack), None);
            assert_eq!(rfind(b'\n', &haystack), None);
            if len > 2 {
                haystack[1] = b'\n';
                haystack[len - 1] = b'\n';
                assert_eq!(find(b'\n', &haystack), Some(1), "{len}");
                assert_eq!(rfind(b'\n', &haystack), Some(len - 1), "{len}");
            }
        }
    }
}
