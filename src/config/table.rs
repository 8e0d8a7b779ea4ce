//! A reader over a parsed TOML table that collects every problem instead of
//! stopping at the first, so `config check` can report them all in one run.
//! Each typed getter marks its key as known and, on a wrong type or value,
//! records a [`Problem`] at its full path (`mqtt.subscribe[1].format`);
//! [`Table::finish`] reports every other key as unknown.
//!
//! The reader must never decide defaults or cross-key rules; the config
//! types do that.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use super::units::{self, SizeOrPercent};

/// One thing wrong in a configuration file, at one key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Where problems are collected while a whole file is read.
#[derive(Default)]
pub struct Problems(RefCell<Vec<Problem>>);

impl Problems {
    pub fn push(&self, key: String, message: impl Into<String>) {
        self.0.borrow_mut().push(Problem {
            key,
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0.into_inner()
    }
}

/// One TOML table being read, with the path that leads to it.
pub struct Table<'a> {
    path: String,
    table: &'a toml::Table,
    known: RefCell<Vec<&'static str>>,
    problems: &'a Problems,
}

impl<'a> Table<'a> {
    pub fn root(table: &'a toml::Table, problems: &'a Problems) -> Self {
        Table {
            path: String::new(),
            table,
            known: RefCell::default(),
            problems,
        }
    }

    /// The full path of `key` in this table, for messages.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Records a problem about `key` of this table.
    pub fn problem(&self, key: &str, message: impl Into<String>) {
        self.problems.push(self.path_of(key), message);
    }

    pub fn has(&self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.known.borrow_mut().push(key);
        self.table.get(key)
    }

    fn typed<T>(
        &self,
        key: &'static str,
        expected: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.get(key)?;
        let result = f(value);
        if result.is_none() {
            self.problem(
                key,
                format!("expected {expected}, found {}", describe(value)),
            );
        }
        result
    }

    pub fn string(&self, key: &'static str) -> Option<String> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    /// A string that must be present and not empty.
    pub fn required_string(&self, key: &'static str) -> Option<String> {
        if !self.table.contains_key(key) {
            self.known.borrow_mut().push(key);
            self.problem(key, "missing (required)");
            return None;
        }
        let s = self.string(key)?;
        if s.trim().is_empty() {
            self.problem(key, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn path(&self, key: &'static str) -> Option<PathBuf> {
        self.string(key).map(PathBuf::from)
    }

    pub fn bool(&self, key: &'static str, default: bool) -> bool {
        self.typed(key, "true or false", Value::as_bool)
            .unwrap_or(default)
    }

    /// An integer within `min..=max`.
    pub fn integer(&self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let Some(n) = self.typed(key, "an integer", Value::as_integer) else {
            return default;
        };
        match u64::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.problem(key, format!("{n} is out of range {min} to {max}"));
                default
            }
        }
    }

    /// A duration in human form ("15m"), at least `min`.
    pub fn duration(&self, key: &'static str, default: Duration, min: Duration) -> Duration {
        let Some(text) = self.typed(key, "a duration such as \"15m\"", Value::as_str) else {
            return default;
        };
        match units::parse_duration(text) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is shorter than the minimum {}",
                        humantime::format_duration(min)
                    ),
                );
                default
            }
            Err(e) => {
                self.problem(key, e);
                default
            }
        }
    }

    /// A size in human form ("256MiB") or a plain number of bytes, within
    /// `min..=max`.
    pub fn size(&self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let Some(parsed) = self.typed(key, "a size such as \"256MiB\"", |v| match v {
            Value::String(s) => Some(units::parse_size(s)),
            Value::Integer(n) => Some(u64::try_from(*n).map_err(|_| format!("invalid size {n}"))),
            _ => None,
        }) else {
            return default;
        };
        match parsed {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(n) => {
                self.problem(key, format!("{n} bytes is out of range {min} to {max}"));
                default
            }
            Err(e) => {
                self.problem(key, e);
                default
            }
        }
    }

    /// A size such as "64MiB", or a share of something such as "5%" (at
    /// most `max_percent`).
    pub fn size_or_percent(
        &self,
        key: &'static str,
        default: SizeOrPercent,
        max_percent: u8,
    ) -> SizeOrPercent {
        let Some(parsed) = self.typed(
            key,
            "a size such as \"64MiB\" or a share such as \"5%\"",
            |v| match v {
                Value::String(s) => Some(match s.trim().strip_suffix('%') {
                    Some(n) => match n.trim().parse::<u8>() {
                        Ok(p) if p <= max_percent => Ok(SizeOrPercent::Percent(p)),
                        _ => Err(format!(
                            "{s:?} is not a whole percentage from 0% to {max_percent}%"
                        )),
                    },
                    None => units::parse_size(s).map(SizeOrPercent::Bytes),
                }),
                Value::Integer(n) => Some(
                    u64::try_from(*n)
                        .map(SizeOrPercent::Bytes)
                        .map_err(|_| format!("invalid size {n}")),
                ),
                _ => None,
            },
        ) else {
            return default;
        };
        parsed.unwrap_or_else(|e| {
            self.problem(key, e);
            default
        })
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&self, key: &'static str, options: &[(&str, T)], default: T) -> T {
        let Some(text) = self.string(key) else {
            return default;
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return *v;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.problem(key, format!("{text:?} is not one of {}", names.join(", ")));
        default
    }

    /// An array of strings.
    pub fn strings(&self, key: &'static str) -> Option<Vec<String>> {
        let items = self.typed(key, "an array of strings", Value::as_array)?;
        let mut out = Vec::new();
        for (i, v) in items.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.problems.push(
                    format!("{}[{i}]", self.path_of(key)),
                    format!("expected a string, found {}", describe(v)),
                ),
            }
        }
        Some(out)
    }

    /// A table of string values, such as static tags.
    pub fn string_map(&self, key: &'static str) -> Vec<(String, String)> {
        let Some(t) = self.typed(key, "a table", Value::as_table) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t {
            match v.as_str() {
                Some(s) => out.push((k.clone(), s.to_owned())),
                None => self.problems.push(
                    format!("{}.{k}", self.path_of(key)),
                    format!("expected a string, found {}", describe(v)),
                ),
            }
        }
        out
    }

    /// How many entries an array key holds, if it is an array (`[[key]]`
    /// tables or a plain list).
    pub fn tables_len(&self, key: &'static str) -> Option<usize> {
        self.get(key).and_then(Value::as_array).map(Vec::len)
    }

    /// A sub-table; `None` when absent or not a table.
    pub fn table(&self, key: &'static str) -> Option<Table<'a>> {
        let t = self.typed(key, "a table", Value::as_table)?;
        Some(self.child(self.path_of(key), t))
    }

    /// An array of tables (`[[key]]`), each with its index in its path.
    pub fn tables(&self, key: &'static str) -> Vec<Table<'a>> {
        let Some(items) = self.typed(key, "an array of tables", Value::as_array) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path_of(key));
            match item.as_table() {
                Some(t) => out.push(self.child(path, t)),
                None => self
                    .problems
                    .push(path, format!("expected a table, found {}", describe(item))),
            }
        }
        out
    }

    fn child(&self, path: String, table: &'a toml::Table) -> Table<'a> {
        Table {
            path,
            table,
            known: RefCell::default(),
            problems: self.problems,
        }
    }

    /// Reports every key of this table that no getter asked for, with the
    /// closest known key as a suggestion.
    pub fn finish(self) {
        let known = self.known.into_inner();
        for key in self.table.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match closest(key, &known) {
                Some(k) => format!("unknown key; did you mean {k:?}?"),
                None if known.is_empty() => "unknown key".to_owned(),
                None => format!(
                    "unknown key; known keys here: {}",
                    sorted(&known).join(", ")
                ),
            };
            self.problems.push(
                if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                },
                message,
            );
        }
    }
}

fn sorted(keys: &[&'static str]) -> Vec<&'static str> {
    let mut v = keys.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The type of a value, never the value itself: a secret written with the
/// wrong type (`password = 123456`) must not be echoed back.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The known key nearest to `key` by edit distance, if it is near enough to
/// be a plausible typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(&key.to_lowercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, f: impl FnOnce(&Table<'_>)) -> Vec<String> {
        let table: toml::Table = text.parse().unwrap();
        let problems = Problems::default();
        let t = Table::root(&table, &problems);
        f(&t);
        t.finish();
        problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn collects_every_problem_with_its_path() {
        let problems = read(
            "colour = 1\n[batch]\nflush_intervall = \"1s\"\nmax_lines = -4\n[[sub]]\ntopic = 3\n",
            |t| {
                let _ = t.string("color");
                let b = t.table("batch").unwrap();
                b.duration("flush_interval", Duration::ZERO, Duration::ZERO);
                b.integer("max_lines", 1, 1, 10);
                b.finish();
                for s in t.tables("sub") {
                    s.required_string("topic");
                    s.required_string("format");
                    s.finish();
                }
            },
        );
        assert_eq!(
            problems,
            vec![
                "batch.max_lines: -4 is out of range 1 to 10",
                "batch.flush_intervall: unknown key; did you mean \"flush_interval\"?",
                "sub[0].topic: expected a string, found an integer",
                "sub[0].format: missing (required)",
                "colour: unknown key; did you mean \"color\"?",
            ]
        );
    }

    #[test]
    fn unknown_key_far_from_any_lists_the_known_ones() {
        let problems = read("zzzzzzzz = 1\n", |t| {
            let _ = t.string("url");
            let _ = t.string("id");
        });
        assert_eq!(
            problems,
            vec!["zzzzzzzz: unknown key; known keys here: id, url"]
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("urll", &["url", "client_id"]), Some("url"));
        assert_eq!(closest("xyz", &["url", "client_id"]), None);
    }
}
