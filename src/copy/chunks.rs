//! How many bytes one `guest-file-write` carries, or one `guest-file-read`
//! asks for.
//!
//! The agent holds a request whole and decodes it, about 4 times the chunk
//! in its memory; the host holds the chunk, its Base64 and the reply line,
//! about 3 times. Throughput hardly depends on the size beyond 64 KiB (the
//! agent's JSON parser is the bound), so the default is modest.

use virtomate_protocol::libvirt::{AGENT_COMMAND_MAX, STRING_MAX};

/// The chunk when none is asked for.
pub const DEFAULT: usize = 1 << 20;

/// The largest `--chunk-size`: keeps the host's peak memory within 64 MiB
/// (and a read's reply well within the reply bound, 48 MiB).
pub const MAX: usize = 16 << 20;

/// Room for the JSON around the Base64 in a request or reply.
const ENVELOPE: usize = 1024;

/// The most through libvirtd: its agent commands are at most 192 KiB, its
/// strings (a reply) at most 4 MiB, both with the data in Base64. Rounded
/// down to whole pages.
pub const LIBVIRT_WRITE: usize = pages((AGENT_COMMAND_MAX - ENVELOPE) / 4 * 3);
pub const LIBVIRT_READ: usize = pages((STRING_MAX - ENVELOPE) / 4 * 3);

const fn pages(len: usize) -> usize {
    len / 4096 * 4096
}

/// The chunk for writes into the guest.
pub fn for_writes(asked: Option<usize>, through_libvirtd: bool) -> usize {
    let chunk = asked.unwrap_or(DEFAULT);
    if through_libvirtd {
        chunk.min(LIBVIRT_WRITE)
    } else {
        chunk
    }
}

/// The chunk for reads from the guest.
pub fn for_reads(asked: Option<usize>, through_libvirtd: bool) -> usize {
    let chunk = asked.unwrap_or(DEFAULT);
    if through_libvirtd {
        chunk.min(LIBVIRT_READ)
    } else {
        chunk
    }
}

/// `--chunk-size`: bytes, or with a binary suffix (`64K`, `1M`, `4MiB`).
pub fn parse(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "expected bytes, or a number with K or M (binary), e.g. 64K; got {text:?}"
            ))
        }
    };
    let value = number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("expected a number of bytes, got {text:?}"))?;
    if value == 0 || value > MAX {
        return Err(format!("expected a chunk from 1 byte to {} MiB", MAX >> 20));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn through_libvirtd_chunks_fit_its_limits() {
        let base64 = |n: usize| n.div_ceil(3) * 4;
        assert!(base64(LIBVIRT_WRITE) + 200 < AGENT_COMMAND_MAX);
        assert!(base64(LIBVIRT_READ) + 200 < STRING_MAX);
        assert_eq!(for_writes(Some(MAX), true), LIBVIRT_WRITE);
        assert_eq!(for_reads(None, true), DEFAULT.min(LIBVIRT_READ));
        assert_eq!(for_writes(Some(4096), true), 4096);
        assert_eq!(for_writes(Some(MAX), false), MAX);
    }

    #[test]
    fn chunk_sizes_take_binary_suffixes() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("64K"), Ok(64 << 10));
        assert_eq!(parse("1m"), Ok(1 << 20));
        assert_eq!(parse("16MiB"), Ok(16 << 20));
        for bad in ["0", "17M", "", "1G", "-1", "1.5M", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
