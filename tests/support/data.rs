//! Test data: bytes that do not compress, log lines that do, and SHA-256
//! sums to compare them by.

use std::io::Write;

use sha2::{Digest, Sha256};

/// Bytes that do not compress, the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The SHA-256 of `data` in lowercase hex, as `sha256sum` prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    virtomate_protocol::hex(&Sha256::digest(data))
}

/// Log lines, as gzip likes them: a few distinct shapes, counters changing.
pub fn log_lines(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len + 128);
    let mut line = 0u64;
    while data.len() < len {
        let level = ["INFO", "WARN", "DEBUG"][(line % 3) as usize];
        writeln!(
            data,
            "2026-12-02T00:{:02}:{:02}.{:03}Z {level} worker[{}] request {line} served in {} ms",
            line / 60000 % 60,
            line / 1000 % 60,
            line % 1000,
            line % 7,
            line * 37 % 500
        )
        .unwrap();
        line += 1;
    }
    data.truncate(len);
    data
}
