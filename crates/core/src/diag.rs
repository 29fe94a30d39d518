//! Configuration errors: each one names the config path it is about
//! (`routes[2].match.path`) and, when known, the line in the file.

use std::fmt;

/// A path into the configuration tree, e.g. `routes[2].plugins[0].config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The root of the document.
    pub fn root() -> Self {
        Path(String::new())
    }

    /// This path followed by mapping key `k`.
    pub fn key(&self, k: &str) -> Path {
        let mut p = Path(String::with_capacity(self.0.len() + 1 + k.len()));
        p.0.push_str(&self.0);
        p.push_key(k);
        p
    }

    /// This path followed by list index `i`.
    pub fn index(&self, i: usize) -> Path {
        let mut p = Path(String::with_capacity(self.0.len() + 8));
        p.0.push_str(&self.0);
        p.push_index(i);
        p
    }

    /// Appends mapping key `k` in place (see [`Path::truncate`] to step back).
    pub fn push_key(&mut self, k: &str) {
        if !self.0.is_empty() {
            self.0.push('.');
        }
        self.0.push_str(k);
    }

    /// Appends list index `i` in place.
    pub fn push_index(&mut self, i: usize) {
        use std::fmt::Write as _;
        // Writing into the path's own buffer cannot fail.
        let _ = write!(self.0, "[{i}]");
    }

    /// The length of the path's text, to [`Path::truncate`] back to.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Steps back to a length [`Path::len`] returned earlier.
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// Where in the document (empty for the whole document).
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong, as a sentence fragment.
    pub message: String,
}

impl Diag {
    /// A problem at `path`; the line is filled in later from the document's line index.
    pub fn at(path: &Path, message: impl Into<String>) -> Self {
        Diag {
            path: path.to_string(),
            line: None,
            message: message.into(),
        }
    }

    /// A problem at a known line with no path (syntax errors).
    pub fn at_line(line: usize, message: String) -> Self {
        Diag {
            path: String::new(),
            line: Some(line),
            message,
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file (or a label such as `<admin>` for pushed configs).
    pub source_name: String,
    /// The problems, in document order.
    pub diags: Vec<Diag>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diags.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.source_name)?;
            // Line 0: a node from no file (an entity of the cluster store).
            if let Some(line) = d.line.filter(|l| *l > 0) {
                write!(f, ":{line}")?;
            }
            if d.path.is_empty() {
                write!(f, ": {}", d.message)?;
            } else {
                write!(f, ": {}: {}", d.path, d.message)?;
            }
        }
        Ok(())
    }
}

/// Collects problems while a configuration is checked, so that all of them are reported.
#[derive(Debug, Default)]
pub struct Diags(pub Vec<Diag>);

impl Diags {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: &Path, message: impl Into<String>) {
        self.0.push(Diag::at(path, message));
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod path_tests {
    use super::Path;

    #[test]
    fn paths_read_as_the_configuration_is_written() {
        let p = Path::root().key("routes").index(12).key("match");
        assert_eq!(p.as_str(), "routes[12].match");
        assert_eq!(Path::root().index(0).as_str(), "[0]");
        assert_eq!(
            Path::root().key("a").index(1_234_567_890).as_str(),
            "a[1234567890]"
        );
        let mut q = Path::root();
        q.push_key("plugins");
        let len = q.len();
        q.push_index(3);
        q.push_key("config");
        assert_eq!(q.as_str(), "plugins[3].config");
        q.truncate(len);
        q.push_index(4);
        assert_eq!(q.as_str(), "plugins[4]");
    }
}
