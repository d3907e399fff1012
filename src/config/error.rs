//! Configuration problems, reported all at once as `FILE:LINE:COL: key.path: message`.

use std::fmt;

use super::node::Pos;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file (the node the problem is about).
    pub pos: Pos,
    /// The key path, e.g. `routes[0].upstream`; empty for the whole document.
    pub path: String,
    /// What is wrong, and where helpful, what would be right.
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file name as given (used as the prefix of every line).
    pub file: String,
    /// The problems, in the order they appear in the file.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// A configuration error with a single problem.
    pub fn single(file: &str, pos: Pos, path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                pos,
                path: path.to_owned(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file, p.pos.line, p.pos.column)?;
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

/// Collects problems while a file is read, so that all of them can be reported together.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn push(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.list.push(Problem {
            pos,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Turns the collected problems into an error, sorted by position.
    pub fn into_error(mut self, file: &str) -> ConfigError {
        self.list
            .sort_by_key(|p| (p.pos.line, p.pos.column, p.path.clone()));
        ConfigError {
            file: file.to_owned(),
            problems: self.list,
        }
    }
}
