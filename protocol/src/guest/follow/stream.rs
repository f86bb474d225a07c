//! The program's two output streams.

/// Which of the program's streams a chunk is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, the chunk files `out.N`.
    Stdout,
    /// Standard error, the chunk files `err.N`.
    Stderr,
}

impl std::fmt::Display for Stream {
    /// `stdout` or `stderr`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}
