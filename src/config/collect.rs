//! Every error of a file in one run, each with its YAML path and line.
//!
//! serde stops at the first problem. When a file does not parse, it is read again as a YAML
//! tree and parsed repeatedly: each error is recorded, the value it is about is taken out (or,
//! when the key is required, replaced by stand-ins of each YAML type in turn until serde moves
//! on), and the next parse finds the next error. The repaired config then goes through the
//! semantic checks too ([`crate::snapshot::Snapshot::build`]), so unknown keys, wrong types, bad
//! values and cross-references all come out together. Lines come from a second, marking YAML
//! parser (yaml-rust2): serde_yaml's values carry none.

use super::{ConfigErrors, FileConfig};
use serde_yaml::{Mapping, Value};
use std::collections::HashMap;

/// Parses a file that serde refused: every error, and the config with the bad values taken out
/// when it can be repaired (for the semantic checks).
pub fn every_error(text: &str) -> (Option<FileConfig>, ConfigErrors) {
    match serde_yaml::from_str(text) {
        Ok(tree) => every_error_in(tree),
        // Not YAML at all: serde_yaml's message names the line and column.
        Err(e) => (None, ConfigErrors::from_yaml(&e)),
    }
}

/// The same for any serde type (a filter's settings), from its YAML tree; paths are relative
/// to the tree.
pub fn every_error_in<T: serde::de::DeserializeOwned>(
    mut tree: Value,
) -> (Option<T>, ConfigErrors) {
    let mut errs = ConfigErrors::default();
    let mut stand_ins: HashMap<String, usize> = HashMap::new();
    // Each round fixes one value; a file has far fewer bad values than this.
    for _ in 0..256 {
        let e = match serde_yaml::to_string(&tree).and_then(|s| serde_yaml::from_str(&s)) {
            Ok(config) => return (Some(config), errs),
            Err(e) => e,
        };
        let problem = Problem::read(&e);
        if !errs.0.iter().any(|r| r.path == problem.path) {
            errs.push(problem.path.clone(), problem.message);
        }
        let repaired = if problem.remove && remove(&mut tree, &problem.path) {
            true
        } else {
            let tried = stand_ins.entry(problem.path.clone()).or_default();
            *tried += 1;
            match STAND_INS.get(*tried - 1) {
                Some(make) => set(&mut tree, &problem.path, make()),
                None => false,
            }
        };
        if !repaired {
            break;
        }
    }
    (None, errs)
}

/// Values of each YAML type, tried in turn for a required key whose own value was bad.
const STAND_INS: [fn() -> Value; 6] = [
    || Value::String("_".into()),
    || Value::Number(1.into()),
    || Value::Bool(true),
    || Value::Mapping(Mapping::new()),
    || Value::Sequence(Vec::new()),
    || Value::String("127.0.0.1:1".into()),
];

/// One serde_yaml error, its path made to name the key itself.
struct Problem {
    path: String,
    message: String,
    /// Taking the value out fixes it (an unknown key, a bad optional value).
    remove: bool,
}

impl Problem {
    fn read(e: &serde_yaml::Error) -> Problem {
        let one = ConfigErrors::from_yaml(e).0.remove(0);
        // The position is in the re-serialized text: the caller finds the line in the file.
        let message = match one.message.rfind(" at line ") {
            Some(at) => one.message[..at].to_owned(),
            None => one.message,
        };
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let expected = expected.trim_start_matches(", ");
            return Problem {
                path: join(&one.path, key),
                message: format!("unknown key{}", suggestion(key, expected)),
                remove: true,
            };
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let key = rest.split('`').next().unwrap_or(rest);
            return Problem {
                path: join(&one.path, key),
                message: "required key is missing".into(),
                remove: false,
            };
        }
        Problem {
            path: one.path,
            message,
            remove: true,
        }
    }
}

/// `; did you mean `path_prefix`?` for a near miss, else the keys the section takes.
fn suggestion(key: &str, expected: &str) -> String {
    let keys: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    let near = keys
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match near {
        Some((_, k)) => format!("; did you mean `{k}`?"),
        None if expected.is_empty() => String::new(),
        None => format!(", {expected}"),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A path's steps: `routes[2].websocket` is `routes`, `2`, `websocket`. Map keys may hold dots
/// (`upstreams.api.v2`): a step that names no key is joined to the next one.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let Some((n, after)) = rest.split_once(']') else {
                break;
            };
            if let Ok(n) = n.parse() {
                out.push(Step::Index(n));
            }
            indexes = after;
        }
    }
    out
}

/// The parent of `path`'s value and the last step, for a change in place.
fn walk<'v>(tree: &'v mut Value, path: &str) -> Option<(&'v mut Value, String, Option<usize>)> {
    let steps = steps(path);
    let mut node = tree;
    let mut i = 0;
    while i < steps.len() {
        let (last, consumed, key) = match &steps[i] {
            Step::Index(n) => (i + 1 == steps.len(), 1, Err(*n)),
            // Keys may hold dots (`api.v2`): the shortest run of key steps that names a key
            // here, or the rest of the path (a key that is missing).
            Step::Key(_) => {
                let (mut j, mut key) = (i, String::new());
                loop {
                    let Some(Step::Key(k)) = steps.get(j) else {
                        return None;
                    };
                    if j > i {
                        key.push('.');
                    }
                    key.push_str(k);
                    j += 1;
                    if j == steps.len() || node.get(key.as_str()).is_some() {
                        break;
                    }
                }
                (j == steps.len(), j - i, Ok(key))
            }
        };
        if last {
            return Some(match key {
                Ok(k) => (node, k, None),
                Err(n) => (node, String::new(), Some(n)),
            });
        }
        node = match key {
            Ok(k) => node.get_mut(k.as_str())?,
            Err(n) => node.get_mut(n)?,
        };
        i += consumed;
    }
    None
}

/// Takes out the value at `path`; false when there is none (a missing key).
fn remove(tree: &mut Value, path: &str) -> bool {
    match walk(tree, path) {
        Some((Value::Mapping(m), key, None)) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// Puts `value` at `path`, adding the key when it is missing.
fn set(tree: &mut Value, path: &str, value: Value) -> bool {
    match walk(tree, path) {
        Some((Value::Mapping(m), key, None)) => {
            m.insert(Value::String(key), value);
            true
        }
        Some((Value::Sequence(s), _, Some(n))) if n < s.len() => {
            s[n] = value;
            true
        }
        _ => false,
    }
}

/// The line of each YAML path in the file, as serde_yaml spells paths (`routes[0].upstream`).
#[derive(Debug, Clone, Default)]
pub struct Lines(HashMap<String, usize>);

impl Lines {
    pub fn of(text: &str) -> Lines {
        use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
        use yaml_rust2::scanner::Marker;

        enum Frame {
            Map { path: String, key: Option<String> },
            Seq { path: String, next: usize },
        }
        #[derive(Default)]
        struct Marks {
            lines: HashMap<String, usize>,
            stack: Vec<Frame>,
        }
        impl Marks {
            /// The path of the node that starts now, or None for a map key.
            fn node(&mut self, scalar: Option<&str>, line: usize) -> Option<String> {
                let path = match self.stack.last_mut() {
                    None => String::new(),
                    Some(Frame::Seq { path, next }) => {
                        *next += 1;
                        format!("{path}[{}]", *next - 1)
                    }
                    Some(Frame::Map { path, key }) => match key.take() {
                        Some(k) => join(path, &k),
                        None => {
                            let k = scalar.unwrap_or("?").to_owned();
                            self.lines.entry(join(path, &k)).or_insert(line);
                            *key = Some(k);
                            return None;
                        }
                    },
                };
                self.lines.entry(path.clone()).or_insert(line);
                Some(path)
            }
        }
        impl MarkedEventReceiver for Marks {
            fn on_event(&mut self, ev: Event, mark: Marker) {
                let line = mark.line();
                match ev {
                    Event::Scalar(v, ..) => {
                        self.node(Some(&v), line);
                    }
                    Event::Alias(_) => {
                        self.node(None, line);
                    }
                    Event::MappingStart(..) => {
                        let path = self.node(None, line).unwrap_or_default();
                        self.stack.push(Frame::Map { path, key: None });
                    }
                    Event::SequenceStart(..) => {
                        let path = self.node(None, line).unwrap_or_default();
                        self.stack.push(Frame::Seq { path, next: 0 });
                    }
                    Event::MappingEnd | Event::SequenceEnd => {
                        self.stack.pop();
                    }
                    _ => {}
                }
            }
        }
        let mut marks = Marks::default();
        // A file the marking parser refuses has no lines; serde_yaml's error says where.
        let _ = Parser::new_from_str(text).load(&mut marks, false);
        marks.lines.remove("");
        Lines(marks.lines)
    }

    /// The line of `path`, or of the nearest enclosing value that is in the file.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX: &str = "\
server:
  treads: 4
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  app:
    peers: [127.0.0.1:3000]
    max_fails: 3
    connect_timeout: 5
    read_timeout: fast
routes:
  - path_prefx: /
    upstream: app
  - upstream: 7
    websocket: {enabled: maybe}
";

    #[test]
    fn every_parse_error_comes_out_with_its_line() {
        let (config, errs) = every_error(SIX);
        let lines = Lines::of(SIX);
        let got: Vec<(Option<usize>, &str, &str)> = errs
            .0
            .iter()
            .map(|e| (lines.line(&e.path), e.path.as_str(), e.message.as_str()))
            .collect();
        let want = [
            (
                Some(2),
                "server.treads",
                "unknown key; did you mean `threads`?",
            ),
            (Some(7), "upstreams.app.max_fails", "unknown key"),
            (
                Some(8),
                "upstreams.app.connect_timeout",
                "invalid type: integer `5`",
            ),
            (
                Some(9),
                "upstreams.app.read_timeout",
                "invalid duration \"fast\"",
            ),
            (
                Some(11),
                "routes[0].path_prefx",
                "unknown key; did you mean `path_prefix`?",
            ),
            (
                Some(14),
                "routes[1].websocket.enabled",
                "invalid type: string \"maybe\"",
            ),
        ];
        for (line, path, start) in want {
            assert!(
                got.iter()
                    .any(|(l, p, m)| *l == line && *p == path && m.starts_with(start)),
                "{path} {start:?} not in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        let config = config.expect("repaired");
        assert_eq!(config.routes.len(), 2);
    }

    #[test]
    fn a_required_key_with_a_bad_value_is_reported_once() {
        let text = "routes:\n  - upstream: [a]\n    path_prefix: {}\n";
        let (_, errs) = every_error(text);
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes[0].upstream", "routes[0].path_prefix"]);
    }

    #[test]
    fn keys_with_dots_and_missing_keys() {
        let text = "upstreams:\n  api.v2:\n    pers: [127.0.0.1:1]\n";
        let (_, errs) = every_error(text);
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["upstreams.api.v2.pers", "upstreams.api.v2.peers"]);
        assert_eq!(Lines::of(text).line("upstreams.api.v2.pers"), Some(3));
        assert_eq!(Lines::of(text).line("upstreams.api.v2.peers"), Some(2));
    }
}
