//! What the clean-up script says of the directory it removes, and what the
//! host makes of it with what it read of each stream.

use super::chunks::Tail;
use super::error::FollowError;

/// How a rotator gone without its end mark left its marker (see
/// `rotators!` in the [module](super) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// It failed where the file system had no space left.
    Full,
    /// It failed with space left.
    Failed,
    /// It left no word: killed, most likely.
    Silent,
}

/// The clean-up script's output: a line `STREAM HOW` per rotator gone
/// without its end mark, then the KiB left (nothing if the guest could not
/// tell). The guest writes it: a line that makes no sense is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Report {
    space_kib: Option<u64>,
    gone: Vec<(String, Gone)>,
}

impl Report {
    pub(super) fn parse(said: &str) -> Report {
        let mut report = Report::default();
        for line in said.lines() {
            match line.split_once(' ') {
                Some((stream, how)) => {
                    let how = match how {
                        "full" => Gone::Full,
                        "fail" => Gone::Failed,
                        _ => Gone::Silent,
                    };
                    report.gone.push((stream.to_owned(), how));
                }
                None => report.space_kib = available_kib(line),
            }
        }
        report
    }

    fn gone(&self, tail: &Tail) -> Option<Gone> {
        let said = self.gone.iter().find(|(stream, _)| stream == tail.name());
        said.map(|(_, how)| *how)
    }

    /// Whether all the output came, from this and what was read: "filled
    /// up" ([`FollowError::Full`]) when the file system had no space left
    /// at the end, or a rotator failed for want of it (its failure mark
    /// read, or its marker renamed so); else output lost
    /// ([`FollowError::Lost`]) when a rotator failed otherwise, or is gone
    /// without its end mark.
    pub(super) fn verdict(&self, dir: &str, tails: &[Tail]) -> Result<(), FollowError> {
        let full = |tail: &Tail| match self.gone(tail) {
            Some(Gone::Full) => true,
            Some(Gone::Failed) => false,
            _ => tail.failed(),
        };
        if self.space_kib == Some(0) || tails.iter().any(full) {
            return Err(FollowError::Full { dir: dir.to_owned() });
        }
        let lost = tails.iter().find_map(|tail| match self.gone(tail) {
            Some(how) if !tail.ended_well() => Some((tail.stream, how == Gone::Failed)),
            _ => None,
        });
        match lost {
            Some((stream, failed)) => Err(FollowError::Lost {
                dir: dir.to_owned(),
                stream,
                failed,
            }),
            None => Ok(()),
        }
    }
}

/// The space left, in KiB, as the clean-up script prints it; `None` when
/// the guest could not tell.
pub(super) fn available_kib(said: &str) -> Option<u64> {
    said.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::Stream;

    fn tails() -> [Tail; 2] {
        [Tail::new(Stream::Stdout), Tail::new(Stream::Stderr)]
    }

    #[test]
    fn the_space_left_is_a_number_or_unknown() {
        assert_eq!(available_kib("0\n"), Some(0));
        assert_eq!(available_kib("97\n"), Some(97));
        assert_eq!(available_kib(""), None);
    }

    #[test]
    fn the_report_names_the_streams_gone_and_the_space_left() {
        let report = Report::parse("out live\nerr full\n97\n");
        assert_eq!(report.space_kib, Some(97));
        let [out, err] = tails();
        assert_eq!(
            (report.gone(&out), report.gone(&err)),
            (Some(Gone::Silent), Some(Gone::Full))
        );
        assert_eq!(Report::parse(""), Report::default());
    }

    #[test]
    fn a_rotator_gone_without_its_end_is_output_lost_or_a_full_disk() {
        let verdict = |said: &str| Report::parse(said).verdict("/tmp/d", &tails());
        assert!(verdict("12\n").is_ok());
        assert!(
            verdict("").is_ok(),
            "no word of the space left: nothing known amiss"
        );
        assert!(matches!(verdict("0\n"), Err(FollowError::Full { .. })));
        assert!(matches!(verdict("err full\n12\n"), Err(FollowError::Full { .. })));
        assert!(matches!(
            verdict("out fail\n12\n"),
            Err(FollowError::Lost {
                stream: Stream::Stdout,
                failed: true,
                ..
            })
        ));
        assert!(matches!(
            verdict("err live\n12\n"),
            Err(FollowError::Lost {
                stream: Stream::Stderr,
                failed: false,
                ..
            })
        ));
        // Full wins: the space is what to act on.
        assert!(matches!(
            verdict("out live\nerr full\n12\n"),
            Err(FollowError::Full { .. })
        ));
        // Garbage from the guest is a rotator gone without a word.
        assert!(matches!(
            verdict("out x y\n12\n"),
            Err(FollowError::Lost { failed: false, .. })
        ));
    }
}
