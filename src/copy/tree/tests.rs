//! The unpacker against streams made by hand: an honest tree, and each
//! attack a hostile guest could send, refused with the entry named and
//! nothing left beside the destination.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::pack::pack;
use super::unpack::Unpacker;
use crate::error::ErrorKind;

/// One header block, its fields written raw: the tar crate's setters
/// refuse the `..` and absolute names a hostile stream holds.
fn header(name: &[u8], kind: EntryType, mode: u32, size: u64, link: &[u8]) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_600_000_000);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// A header and its data, padded to whole blocks.
fn entry(name: &[u8], kind: EntryType, mode: u32, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut bytes = header(name, kind, mode, data.len() as u64, link);
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

fn dir(name: &str, mode: u32) -> Vec<u8> {
    entry(name.as_bytes(), EntryType::Directory, mode, b"", b"")
}

fn file(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    entry(name.as_bytes(), EntryType::Regular, mode, data, b"")
}

fn symlink(name: &str, target: &str) -> Vec<u8> {
    entry(name.as_bytes(), EntryType::Symlink, 0o777, b"", target.as_bytes())
}

fn hard_link(name: &str, target: &str) -> Vec<u8> {
    entry(name.as_bytes(), EntryType::Link, 0o644, b"", target.as_bytes())
}

/// The entries, then the end-of-archive blocks.
fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = entries.concat();
    bytes.extend_from_slice(&[0; 1024]);
    bytes
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Unpacks `stream` to `PARENT/dest` and renames it into place.
fn unpack_into(parent: &Path, stream: &[u8]) -> Result<super::unpack::Unpacked, crate::error::CliError> {
    let mut unpacker = Unpacker::create(&parent.join("dest"), "test", 0o022)?;
    let unpacked = unpacker.unpack(stream)?;
    unpacker.place()?;
    Ok(unpacked)
}

/// `stream` is refused, with a message holding `names`; nothing is left
/// in the destination's directory (`outside`, beside it, stays as it was).
fn assert_refused(stream: &[u8], names: &str) -> String {
    let parent = tempfile::tempdir().unwrap();
    let error = unpack_into(parent.path(), stream).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(names), "{names} not in: {message}");
    assert_eq!(listing(parent.path()), Vec::<String>::new(), "after: {message}");
    message
}

#[test]
fn an_honest_tree_keeps_its_modes_links_and_empty_things() {
    let parent = tempfile::tempdir().unwrap();
    let stream = archive(&[
        dir("./", 0o750),
        dir("./bin/", 0o755),
        file("./bin/run", 0o755, b"#!/bin/sh\n"),
        file("./secret", 0o600, b"key"),
        file("./empty", 0o644, b""),
        dir("./empty dir/", 0o700),
        file("./new\nline", 0o644, b"x"),
        symlink("./link", "bin/run"),
        symlink("./etc", "/etc"),
        hard_link("./again", "./secret"),
    ]);
    let unpacked = unpack_into(parent.path(), &stream).unwrap();
    let dest = parent.path().join("dest");
    let mode = |name: &str| std::fs::symlink_metadata(dest.join(name)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o750);
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("secret"), 0o600);
    assert_eq!(mode("empty dir"), 0o700);
    assert_eq!(std::fs::read(dest.join("new\nline")).unwrap(), b"x");
    assert_eq!(std::fs::read(dest.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("bin/run")
    );
    assert_eq!(std::fs::read_link(dest.join("etc")).unwrap(), Path::new("/etc"));
    assert_eq!(std::fs::metadata(dest.join("again")).unwrap().nlink(), 2);
    let mtime = std::fs::metadata(dest.join("secret")).unwrap().mtime();
    assert_eq!(mtime, 1_600_000_000);
    assert_eq!(
        (unpacked.files, unpacked.directories, unpacked.symlinks),
        (4, 2, 2)
    );
    assert_eq!(listing(parent.path()), ["dest"], "no temporary directory left");
}

#[test]
fn a_name_with_dot_dot_is_refused() {
    assert_refused(&archive(&[file("./../outside", 0o644, b"x")]), "\"./../outside\"");
    assert_refused(&archive(&[file("a/../../x", 0o644, b"x")]), "'..'");
}

#[test]
fn an_absolute_name_is_refused() {
    let message = assert_refused(&archive(&[file("/etc/passwd", 0o644, b"x")]), "\"/etc/passwd\"");
    assert!(message.contains("absolute"), "{message}");
}

#[test]
fn nothing_is_written_through_a_link_the_stream_made() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let message = assert_refused(
        &archive(&[symlink("link", target), file("link/passwd", 0o644, b"owned")]),
        "\"link/passwd\"",
    );
    assert!(message.contains("through \"link\""), "{message}");
    assert_eq!(listing(outside.path()), Vec::<String>::new());
    // Not even through a link to a directory inside the tree.
    assert_refused(
        &archive(&[dir("d/", 0o755), symlink("l", "d"), file("l/f", 0o644, b"x")]),
        "\"l/f\"",
    );
}

#[test]
fn an_entry_never_replaces_another() {
    // A file, then a link in its place, then a write "into" it.
    let message = assert_refused(
        &archive(&[file("f", 0o644, b"x"), symlink("f", "/etc/passwd")]),
        "\"f\"",
    );
    assert!(message.contains("twice"), "{message}");
    assert_refused(&archive(&[symlink("l", "/tmp"), dir("l/", 0o755)]), "\"l/\"");
}

#[test]
fn a_hard_link_must_be_to_a_file_of_the_copy() {
    assert_refused(&archive(&[hard_link("passwd", "/etc/passwd")]), "\"passwd\"");
    assert_refused(&archive(&[hard_link("passwd", "../../etc/passwd")]), "\"passwd\"");
    let message = assert_refused(&archive(&[hard_link("h", "missing")]), "\"h\"");
    assert!(message.contains("no file the copy made"), "{message}");
    // Not to a link (which would then be followed) nor through one.
    assert_refused(
        &archive(&[symlink("l", "/etc/passwd"), hard_link("h", "l")]),
        "\"h\"",
    );
    assert_refused(
        &archive(&[symlink("l", "/etc"), hard_link("h", "l/passwd")]),
        "\"h\"",
    );
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let message = assert_refused(
        &archive(&[entry(b"dev", EntryType::Char, 0o644, b"", b"")]),
        "\"dev\"",
    );
    assert!(message.contains("a character device"), "{message}");
    assert_refused(
        &archive(&[entry(b"blk", EntryType::Block, 0o644, b"", b"")]),
        "a block device",
    );
    assert_refused(
        &archive(&[entry(b"fifo", EntryType::Fifo, 0o644, b"", b"")]),
        "a FIFO",
    );
}

#[test]
fn set_id_and_sticky_bits_are_dropped_and_named() {
    let parent = tempfile::tempdir().unwrap();
    let stream = archive(&[
        file("suid", 0o4755, b"x"),
        dir("tmp/", 0o1777),
        file("sgid", 0o2755, b""),
    ]);
    let unpacked = unpack_into(parent.path(), &stream).unwrap();
    assert_eq!(unpacked.stripped, ["suid", "tmp/", "sgid"]);
    let dest = parent.path().join("dest");
    for (name, mode) in [("suid", 0o755), ("tmp", 0o755), ("sgid", 0o755)] {
        let got = std::fs::metadata(dest.join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "{name}");
    }
}

#[test]
fn a_long_name_from_a_gnu_or_pax_header_is_checked_the_same() {
    let long = format!("{}/../../escape", "d".repeat(200));
    let gnu = entry(b"././@LongLink", EntryType::GNULongName, 0, long.as_bytes(), b"");
    assert_refused(&archive(&[gnu, file("short", 0o644, b"x")]), "escape");
    let record = format!("path={long}\n");
    let record = format!("{} {record}", record.len() + 4);
    let pax = entry(b"pax", EntryType::XHeader, 0, record.as_bytes(), b"");
    assert_refused(&archive(&[pax, file("short", 0o644, b"x")]), "escape");
}

#[test]
fn a_name_nested_deeper_than_any_tree_is_refused() {
    let deep = format!("{}f", "d/".repeat(3000));
    let gnu = entry(b"././@LongLink", EntryType::GNULongName, 0, deep.as_bytes(), b"");
    assert_refused(
        &archive(&[gnu, file("short", 0o644, b"x")]),
        "nested deeper than the 2048",
    );
}

#[test]
fn an_oversized_extension_header_is_refused_before_it_is_read() {
    // Declares 1 TiB and holds nothing: held whole, it would fill memory.
    let huge = header(b"././@LongLink", EntryType::GNULongName, 0, 1 << 40, b"");
    let message = assert_refused(&archive(&[huge]), "declares 1099511627776 bytes");
    assert!(message.contains("cannot be read"), "{message}");
}

#[test]
fn a_damaged_or_cut_stream_leaves_nothing() {
    let mut bad_sum = file("f", 0o644, b"x");
    bad_sum[0] = b'g';
    assert_refused(&archive(&[bad_sum]), "checksum");
    let whole = archive(&[dir("d/", 0o755), file("d/f", 0o644, &[7; 5000])]);
    assert_refused(&whole[..2048], "ends inside \"d/f\"");
    assert_refused(&whole[..6144], "without its end-of-archive block");
    assert_refused(b"tar: .: Cannot open: Permission denied\n", "cannot be read");
}

#[test]
fn a_destination_that_exists_is_refused_before_anything_is_written() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("dest")).unwrap();
    let error = Unpacker::create(&parent.path().join("dest"), "test", 0o022)
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::Path);
    assert!(error.to_string().contains("already exists"), "{error}");
    assert_eq!(listing(parent.path()), ["dest"]);
}

#[test]
fn what_the_packer_makes_the_unpacker_takes_whole() {
    let source = tempfile::tempdir().unwrap();
    let root = source.path();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::write(root.join("a/b/c/deep"), vec![1u8; 70_000]).unwrap();
    std::fs::write(root.join("with space"), b"s").unwrap();
    std::fs::write(root.join("new\nline"), b"n").unwrap();
    std::fs::write(root.join("e"), b"").unwrap();
    std::fs::set_permissions(root.join("e"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("link")).unwrap();
    std::os::unix::fs::symlink(
        format!("{}/{}", "x".repeat(150), "y".repeat(150)),
        root.join("long"),
    )
    .unwrap();
    let mut stream = Vec::new();
    let packed = pack(root, &mut stream).unwrap();
    assert_eq!((packed.files, packed.directories, packed.symlinks), (4, 4, 2));
    let parent = tempfile::tempdir().unwrap();
    let unpacked = unpack_into(parent.path(), &stream).unwrap();
    assert_eq!(
        (unpacked.files, unpacked.directories, unpacked.symlinks),
        (4, 4, 2)
    );
    let dest = parent.path().join("dest");
    assert_eq!(std::fs::read(dest.join("a/b/c/deep")).unwrap(), vec![1u8; 70_000]);
    assert_eq!(std::fs::metadata(dest.join("e")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("a/b"));
    let long = std::fs::read_link(dest.join("long")).unwrap();
    assert_eq!(long.to_str().unwrap().len(), 301);
}

#[test]
fn the_packers_stream_goes_over_in_whole_pieces_then_its_end() {
    use super::stream_in::{Piece, PieceWriter, PIECE, QUEUED};
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("data"), vec![7u8; 150_000]).unwrap();
    let (queue, mut pieces) = tokio::sync::mpsc::channel(QUEUED);
    let root = source.path().to_owned();
    let packer = std::thread::spawn(move || {
        let mut writer = PieceWriter::new(queue);
        let packed = pack(&root, &mut writer);
        writer.end(packed);
    });
    let mut stream = Vec::new();
    let mut sizes = Vec::new();
    let packed = loop {
        match pieces.blocking_recv().expect("an end before the queue closes") {
            Piece::Data(data) => {
                sizes.push(data.len());
                stream.extend(data);
            }
            Piece::End(packed) => break packed.unwrap(),
        }
    };
    packer.join().unwrap();
    assert!(pieces.blocking_recv().is_none());
    assert_eq!((packed.files, packed.bytes), (1, 150_000));
    let (last, whole) = sizes.split_last().unwrap();
    assert!(whole.iter().all(|&n| n == PIECE) && *last <= PIECE, "{sizes:?}");
    let parent = tempfile::tempdir().unwrap();
    unpack_into(parent.path(), &stream).unwrap();
    assert_eq!(
        std::fs::read(parent.path().join("dest/data")).unwrap(),
        vec![7u8; 150_000]
    );
}

#[test]
fn a_packer_whose_reader_went_stops_with_an_error() {
    use super::stream_in::PieceWriter;
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("data"), vec![7u8; 300_000]).unwrap();
    let (queue, pieces) = tokio::sync::mpsc::channel(1);
    drop(pieces);
    let error = pack(source.path(), PieceWriter::new(queue)).unwrap_err();
    assert!(error.to_string().contains("cannot send"), "{error}");
}

#[test]
fn the_packer_refuses_a_fifo_by_name() {
    let source = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(
        &source.path().join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let error = pack(source.path(), std::io::sink()).unwrap_err();
    assert!(error.to_string().contains("pipe is a FIFO"), "{error}");
}

#[test]
fn directories_a_stream_implies_are_made_as_mkdir_would_and_read_only_ones_still_fill() {
    let parent = tempfile::tempdir().unwrap();
    let stream = archive(&[
        file("implied/deeper/f", 0o644, b"x"),
        dir("ro/", 0o500),
        file("ro/inside", 0o400, b"y"),
        dir("ro/sub/", 0o555),
        file("ro/sub/more", 0o644, b"z"),
    ]);
    unpack_into(parent.path(), &stream).unwrap();
    let dest = parent.path().join("dest");
    let mode = |name: &str| std::fs::metadata(dest.join(name)).unwrap().mode() & 0o7777;
    assert_eq!(mode("implied"), 0o755);
    assert_eq!(mode("implied/deeper"), 0o755);
    assert_eq!(mode("ro"), 0o500);
    assert_eq!(mode("ro/sub"), 0o555);
    assert_eq!(std::fs::read(dest.join("ro/sub/more")).unwrap(), b"z");
    let mtime = std::fs::metadata(dest.join("ro")).unwrap().mtime();
    assert_eq!(
        mtime, 1_600_000_000,
        "a directory's time is set after its entries"
    );
}

#[test]
fn the_names_of_stripped_entries_are_listed_up_to_a_bound() {
    let parent = tempfile::tempdir().unwrap();
    let entries: Vec<Vec<u8>> = (0..130).map(|n| file(&format!("s{n}"), 0o6755, b"")).collect();
    let unpacked = unpack_into(parent.path(), &archive(&entries)).unwrap();
    assert_eq!(unpacked.stripped.len(), super::unpack::STRIPPED_LISTED);
    assert_eq!(unpacked.stripped_more, 30);
}

mod property {
    use proptest::prelude::*;

    use super::*;

    /// Name parts a hostile stream would mix: ordinary ones, `..`, `.`,
    /// the link names it makes, and `OUT`, replaced by the absolute path
    /// of a directory beside the destination.
    fn part() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "..", ".", "", "link", "victim", "OUT"])
    }

    fn name(outside: &str, parts: &[&str]) -> String {
        parts.join("/").replace("OUT", outside)
    }

    #[derive(Debug, Clone)]
    enum Made {
        Dir,
        File(Vec<u8>),
        Symlink(Vec<&'static str>),
        HardLink(Vec<&'static str>),
        Fifo,
    }

    fn made() -> impl Strategy<Value = Made> {
        prop_oneof![
            Just(Made::Dir),
            prop::collection::vec(any::<u8>(), 0..700).prop_map(Made::File),
            prop::collection::vec(part(), 1..4).prop_map(Made::Symlink),
            prop::collection::vec(part(), 1..4).prop_map(Made::HardLink),
            Just(Made::Fifo),
        ]
    }

    fn entries() -> impl Strategy<Value = Vec<(Vec<&'static str>, Made, u32)>> {
        prop::collection::vec((prop::collection::vec(part(), 1..4), made(), 0u32..0o10000), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the stream: no panic, nothing outside the destination
        /// touched, and a refusal leaves nothing.
        #[test]
        fn no_stream_writes_outside_the_destination_or_leaves_a_half_tree(
            entries in entries(),
            cut in prop::option::of(0usize..8192),
        ) {
            let parent = tempfile::tempdir().unwrap();
            let outside = parent.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            std::fs::write(outside.join("victim"), "untouched").unwrap();
            let out = outside.to_str().unwrap();
            let mut stream = archive(&entries.iter().map(|(parts, made, mode)| {
                let path = name(out, parts);
                match made {
                    Made::Dir => entry(path.as_bytes(), EntryType::Directory, *mode, b"", b""),
                    Made::File(data) => entry(path.as_bytes(), EntryType::Regular, *mode, data, b""),
                    Made::Symlink(to) => {
                        entry(path.as_bytes(), EntryType::Symlink, *mode, b"", name(out, to).as_bytes())
                    }
                    Made::HardLink(to) => {
                        entry(path.as_bytes(), EntryType::Link, *mode, b"", name(out, to).as_bytes())
                    }
                    Made::Fifo => entry(path.as_bytes(), EntryType::Fifo, *mode, b"", b""),
                }
            }).collect::<Vec<_>>());
            if let Some(cut) = cut {
                stream.truncate(cut.min(stream.len()));
            }
            let unpacked = unpack_into(parent.path(), &stream);
            prop_assert_eq!(listing(&outside), ["victim"]);
            prop_assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "untouched");
            let left = listing(parent.path());
            match unpacked {
                Ok(_) => prop_assert_eq!(left, ["dest", "outside"]),
                Err(_) => prop_assert_eq!(left, ["outside"]),
            }
        }
    }
}
