//! Printing an error with its causes. Each error of this crate prints only its own context and
//! returns its cause as [`Error::source`]; a log line or the command line shows the whole chain
//! through [`error_chain`].

use std::error::Error;
use std::fmt;

/// `error` and every cause under it, joined by `: ` (`{:#}`: one per line, `caused by:` before
/// each cause).
pub fn error_chain<'a>(error: &'a (dyn Error + 'static)) -> ErrorChain<'a> {
    ErrorChain(error)
}

/// The [`Display`](fmt::Display) of an error's chain; see [`error_chain`].
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        write!(f, "{shown}")?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            // Some third-party errors print their own source as well: show such text once.
            if !shown.ends_with(&text) {
                if f.alternate() {
                    write!(f, "\n  caused by: {text}")?;
                } else {
                    write!(f, ": {text}")?;
                }
                shown = text;
            }
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the checkpoint")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn prints_each_cause_once() {
        let io = || std::io::Error::other("disk on fire");
        let e = Outer(io());
        assert_eq!(
            error_chain(&e).to_string(),
            "reading the checkpoint: disk on fire"
        );
        assert_eq!(
            format!("{:#}", error_chain(&e)),
            "reading the checkpoint\n  caused by: disk on fire"
        );
        // A third-party style error that prints its cause too: not repeated.
        assert_eq!(
            error_chain(&Repeats(io())).to_string(),
            "outer: disk on fire"
        );
    }
}
