//! Settings from the environment, falling back to a file of `export NAME='value'`
//! lines (the local stack's `.dev/env`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

#[derive(Debug, Default)]
pub struct Settings {
    file: BTreeMap<String, String>,
}

impl Settings {
    /// Reads `path`, or `.dev/env` when it exists and no path is given.
    pub fn load(path: Option<&Path>) -> Result<Settings> {
        let default = Path::new(".dev/env");
        let path = match path {
            Some(p) => p,
            None if default.exists() => default,
            None => return Ok(Settings::default()),
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Settings { file: parse(&text) })
    }

    /// The environment variable if set, else the file's value.
    pub fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.file.get(name).cloned())
    }
}

fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once('=') else {
            continue;
        };
        out.insert(name.trim().to_owned(), unquote(value.trim()));
    }
    out
}

/// Undoes the shell quoting the stack writes: `'…'` with `'\''` for a quote.
fn unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => v.trim_matches('"').to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stack_env_lines() {
        let text =
            "export A='/x/y'\nexport B='it'\\''s'\n# comment\nexport C=plain\nnot an export\n";
        let m = parse(text);
        assert_eq!(m.get("A").map(String::as_str), Some("/x/y"));
        assert_eq!(m.get("B").map(String::as_str), Some("it's"));
        assert_eq!(m.get("C").map(String::as_str), Some("plain"));
        assert_eq!(m.len(), 3);
    }
}
