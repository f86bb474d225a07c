//! What the schema says of each command's arguments, as data: enough to
//! check a request before it is sent (`virtomate guest-cmd` does).

/// One command of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// The wire name: `guest-exec`.
    pub name: &'static str,
    /// The schema's `Since:` text: `2.5`, `9.1 (Linux only); 11.0 (Windows)`.
    pub since: &'static str,
    /// False for the commands that do not reply when they succeed.
    pub success_response: bool,
    /// The members of its `arguments`.
    pub arguments: &'static [MemberSpec],
}

impl CommandSpec {
    /// The QEMU version the command came with, as `(major, minor)`: the
    /// first version its `Since:` names.
    ///
    /// ```
    /// use virtomate_protocol::qga::schema::command_spec;
    ///
    /// assert_eq!(command_spec("guest-get-load").unwrap().since_version(), Some((10, 0)));
    /// assert_eq!(command_spec("guest-network-get-route").unwrap().since_version(), Some((9, 1)));
    /// ```
    pub fn since_version(&self) -> Option<(u32, u32)> {
        let version = self
            .since
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?;
        let mut parts = version.split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
            _ => None,
        }
    }
}

/// One member of a command's arguments or of a struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSpec {
    /// The member's name: `input-data`.
    pub name: &'static str,
    /// Its type as the schema writes it: `str`, `int`, `[str]`, or the
    /// name of a [`TypeSpec`] in [`ARGUMENT_TYPES`](super::ARGUMENT_TYPES).
    pub ty: &'static str,
    /// Whether it may be left out.
    pub optional: bool,
}

/// A type that a command's arguments use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeSpec {
    /// Its name in the schema.
    pub name: &'static str,
    /// What JSON it is.
    pub shape: Shape,
}

/// What JSON a [`TypeSpec`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An object with these members.
    Struct(&'static [MemberSpec]),
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A value of any one of these types.
    Alternate(&'static [&'static str]),
}
