//! The schema's literals (`{ 'command': 'guest-ping', 'data': {...} }`),
//! read with their members in the order written: the generated structs
//! follow it.

/// One literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Str(String),
    Bool(bool),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Node)]> {
        match self {
            Node::Object(members) => Some(members),
            _ => None,
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_object()?
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }
}

/// Reads one literal that fills `text` (whitespace around it allowed).
pub fn parse(text: &str) -> Result<Node, String> {
    let mut reader = Reader {
        text: text.as_bytes(),
        at: 0,
    };
    let node = reader.node()?;
    reader.skip_space();
    match reader.at == reader.text.len() {
        true => Ok(node),
        false => Err(format!("text after the literal at byte {}", reader.at)),
    }
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_space();
        match self.text.get(self.at) == Some(&byte) {
            true => {
                self.at += 1;
                Ok(())
            }
            false => Err(format!("expected '{}' at byte {}", byte as char, self.at)),
        }
    }

    fn node(&mut self) -> Result<Node, String> {
        self.skip_space();
        match self.text.get(self.at) {
            Some(b'\'') => self.string().map(Node::Str),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                while !self.close(b']') {
                    items.push(self.node()?);
                    self.comma();
                }
                Ok(Node::List(items))
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                while !self.close(b'}') {
                    self.skip_space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    members.push((key, self.node()?));
                    self.comma();
                }
                Ok(Node::Object(members))
            }
            _ if self.text[self.at..].starts_with(b"true") => {
                self.at += 4;
                Ok(Node::Bool(true))
            }
            _ if self.text[self.at..].starts_with(b"false") => {
                self.at += 5;
                Ok(Node::Bool(false))
            }
            _ => Err(format!("no literal at byte {}", self.at)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'\'')?;
        let start = self.at;
        while self.text.get(self.at).is_some_and(|&b| b != b'\'') {
            self.at += 1;
        }
        let text = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        self.expect(b'\'')?;
        Ok(text)
    }

    /// Whether the list or object ends here (and steps past its end).
    fn close(&mut self, byte: u8) -> bool {
        self.skip_space();
        let closes = self.text.get(self.at) == Some(&byte) || self.at >= self.text.len();
        if closes {
            self.at += 1;
        }
        closes
    }

    fn comma(&mut self) {
        self.skip_space();
        if self.text.get(self.at) == Some(&b',') {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order() {
        let node = parse("{ 'z': 'str', 'a': ['int'], 'b': true }").unwrap();
        let keys: Vec<&str> = node
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["z", "a", "b"]);
        assert_eq!(node.get("a"), Some(&Node::List(vec![Node::Str("int".into())])));
        assert!(parse("{ 'a': ").is_err());
    }
}
