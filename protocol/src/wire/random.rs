//! Randomness from the operating system's source (`getrandom(2)`), for
//! names nobody in the guest can guess and for the handshake's id.

/// `N` random bytes from the operating system.
///
/// ```
/// let [a, b] = virtomate_protocol::random_bytes::<2>().unwrap();
/// # let _ = (a, b);
/// ```
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

/// 128 random bits in hex: a name nobody in the guest can guess.
///
/// ```
/// let name = virtomate_protocol::random_name().unwrap();
/// assert_eq!(name.len(), 32);
/// ```
pub fn random_name() -> std::io::Result<String> {
    Ok(crate::hex(&random_bytes::<16>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_128_random_bits() {
        let (a, b) = (random_name().unwrap(), random_name().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
