//! The clean-up of a copy whose VM stopped under it (killed, shut off):
//! its agent is gone, and with it the open file and any program of the
//! copy's, so only the host's side can be cleaned. What the copy had made
//! in the guest stays on the guest's disk, should that outlast the VM:
//! it is named, with what removes it later: both the private directory
//! beside the destination (see `stale`) and the pipes' directory of
//! `--compress` and `-r` (see the protocol crate's `leftovers`) are tagged
//! with this virtomate's process.

use super::location::guest_parent;
use super::{said_left, Copy, FileAgent};

/// What removes the guest directory `dir` that a copy could not: both
/// kinds are tagged with this process, the pipes' directory
/// (`virtomate-follow-…`) in a file its maker's sweep reads (see the
/// protocol crate's `leftovers`), the private directory beside the
/// destination in its name (see `stale`).
pub fn removed_later(dir: &str) -> String {
    let name = dir.rsplit('/').next().unwrap_or(dir);
    match name.starts_with("virtomate-follow-") {
        true => "the next run with --follow or -i, copy -r, or copy --compress out of the guest from \
                 this host sweeps it once this virtomate has ended"
            .to_owned(),
        false => format!(
            "the next copy of one file or copy -r into {} from this host removes it",
            guest_parent(dir)
        ),
    }
}

impl<A: FileAgent> Copy<'_, A> {
    /// Removes what the copy left on the host, asks nothing of the agent,
    /// and says what stays in the guest.
    pub async fn clean_up_after_stop(&mut self) -> String {
        let mut done = Vec::new();
        let mut left = Vec::new();
        self.clean_up_host(&mut done, &mut left).await;
        let said = said_left(done, left);
        let partial = self.left.guest_temp.take();
        let mut in_guest = Vec::new();
        for dir in [self.left.guest_dir.take(), self.left.guest_tree.take()]
            .into_iter()
            .flatten()
        {
            let holding = match &partial {
                Some(file) if file.starts_with(&format!("{dir}/")) => {
                    format!(", holding the partial file {file}")
                }
                _ => String::new(),
            };
            in_guest.push(format!("{dir}{holding} ({})", removed_later(&dir)));
        }
        self.left = Default::default();
        match in_guest.is_empty() {
            true => said,
            false => format!(
                "{said}; in the guest, should its disk keep it: {}",
                in_guest.join("; ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::removed_later;

    #[test]
    fn the_pipes_directory_is_swept_by_a_run_and_the_private_one_by_a_copy_into_its_parent() {
        let pipes = removed_later("/tmp/virtomate-follow-0123456789abcdef0123456789abcdef");
        assert!(pipes.contains("run with --follow or -i"), "{pipes}");
        let private = removed_later("/root/in/.virtomate-0123-tag");
        assert!(
            private.contains("copy -r into /root/in from this host"),
            "{private}"
        );
    }
}
