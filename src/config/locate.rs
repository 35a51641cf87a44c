//! Where each key of the YAML file stands: a map from key path (`pools.web.backends[0].weight`) to line and column.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

impl Location {
    pub const START: Location = Location { line: 1, col: 1 };
}

/// Key path -> location of the node (for a mapping entry: of its key).
#[derive(Debug, Default)]
pub struct LocationIndex {
    nodes: HashMap<String, Location>,
}

impl LocationIndex {
    /// Index `text`; a document that does not parse yields an empty index (the syntax error is
    /// reported by the YAML parser with its own location).
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return LocationIndex::default();
        }
        LocationIndex {
            nodes: builder.nodes,
        }
    }

    /// The location of `path`, or of its nearest ancestor that is indexed.
    pub fn find(&self, path: &str) -> Location {
        let mut path = path;
        loop {
            if let Some(loc) = self.nodes.get(path) {
                return *loc;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return Location::START,
            }
        }
    }
}

enum Frame {
    /// Inside a mapping: the path of the mapping and, once read, the key awaiting its value.
    Map { path: String, key: Option<String> },
    /// Inside a sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    nodes: HashMap<String, Location>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// Called for each node; returns the node's path if it is a value (not a mapping key).
    fn place(&mut self, mark: Marker, scalar_key: Option<&str>) -> Option<String> {
        let loc = Location {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.nodes.entry(item.clone()).or_insert(loc);
                Some(item)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key: remember it and where it stands.
                    let k = scalar_key.unwrap_or("?").to_string();
                    self.nodes.entry(join(path, &k)).or_insert(loc);
                    // A block mapping's start is reported late: its first key is where it begins.
                    if let Some(start) = self.nodes.get_mut(path.as_str()) {
                        if (loc.line, loc.col) < (start.line, start.col) {
                            *start = loc;
                        }
                    }
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.place(mark, Some(&value));
            }
            Event::Alias(_) => {
                self.place(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.place(mark, None).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.place(mark, None).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "pools:\n  web:\n    backends:\n      - {address: 1.2.3.4:80, weight: 0}\n      - address: x\n";
        let idx = LocationIndex::build(text);
        assert_eq!(idx.find("pools"), Location { line: 1, col: 1 });
        assert_eq!(idx.find("pools.web"), Location { line: 2, col: 3 });
        assert_eq!(
            idx.find("pools.web.backends[0].weight"),
            Location { line: 4, col: 31 }
        );
        assert_eq!(
            idx.find("pools.web.backends[1].address"),
            Location { line: 5, col: 9 }
        );
        // unknown paths fall back to the nearest ancestor
        assert_eq!(
            idx.find("pools.web.backends[1].nope"),
            Location { line: 5, col: 9 }
        );
        assert_eq!(idx.find("zzz"), Location::START);
    }
}
