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

/// What removes the pipes' directory of a copy that could not: its owner
/// tag tells the next run that makes one that this process is gone.
pub const SWEPT_BY: &str = "the next run with --follow or -i, copy -r, or copy --compress out of the \
                            guest from this host sweeps it once this virtomate has ended";

impl<A: FileAgent> Copy<'_, A> {
    /// Removes what the copy left on the host, asks nothing of the agent,
    /// and says what stays in the guest.
    pub async fn clean_up_after_stop(&mut self) -> String {
        let mut done = Vec::new();
        let mut left = Vec::new();
        self.clean_up_host(&mut done, &mut left).await;
        let said = said_left(done, left);
        let follow_dir = self.left.follow.take().map(|follow| follow.dir().to_owned());
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
            let removed_by = match follow_dir.as_deref() == Some(dir.as_str()) {
                true => SWEPT_BY.to_owned(),
                false => format!(
                    "the next copy of one file or copy -r into {} from this host removes it",
                    guest_parent(&dir)
                ),
            };
            in_guest.push(format!("{dir}{holding} ({removed_by})"));
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
