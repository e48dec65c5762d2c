//! Where `dlq replay` may publish: the original subject a dead letter names is data anyone who could
//! publish to the dead-letter subjects wrote, and replay publishes with the operator's credentials. So
//! only a literal subject that one of the score subjects (`nats.subjects`, NATS wildcards) or an
//! operator's `--allow-subject` pattern matches is replayed; anything else (`$JS.API.…`, another
//! service's subjects, a wildcard) is refused and the letter kept.

/// The patterns a replay may publish to.
#[derive(Debug, Clone)]
pub struct Allowed {
    patterns: Vec<String>,
}

impl Allowed {
    /// The score subjects and the operator's extra patterns.
    pub fn new(subjects: &[String], extra: &[String]) -> Self {
        Self {
            patterns: subjects.iter().chain(extra).cloned().collect(),
        }
    }

    /// May a letter naming `subject` be published there?
    pub fn permits(&self, subject: &str) -> bool {
        is_literal(subject) && self.patterns.iter().any(|p| matches(p, subject))
    }

    /// The patterns, for messages.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// A subject one can publish to: non-empty tokens, no wildcard, no white space or control character.
fn is_literal(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

/// NATS subject matching: `*` is one token, a final `>` is one or more tokens.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    let mut pattern = pattern.split('.').peekable();
    while let Some(p) = pattern.next() {
        if p == ">" && pattern.peek().is_none() {
            return subject.next().is_some();
        }
        match subject.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards_match_tokens() {
        assert!(matches("scores.update.>", "scores.update.a"));
        assert!(matches("scores.update.>", "scores.update.a.b"));
        assert!(!matches("scores.update.>", "scores.update"));
        assert!(matches("scores.*.x", "scores.update.x"));
        assert!(!matches("scores.*.x", "scores.update.y.x"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("scores.update.>", "scores.updates.a"));
    }

    #[test]
    fn only_literal_subjects_under_the_patterns_are_permitted() {
        let allowed = Allowed::new(&["scores.update.>".into()], &[]);
        assert!(allowed.permits("scores.update.board-1"));
        for forged in [
            "$JS.API.STREAM.PURGE.SCORES",
            "scores.deadletter.malformed_json",
            "scores.update.*",
            "scores.update.>",
            "scores.update..x",
            "scores.update.a b",
            "",
        ] {
            assert!(!allowed.permits(forged), "{forged:?}");
        }
        let extra = Allowed::new(&["scores.update.>".into()], &["legacy.scores.*".into()]);
        assert!(extra.permits("legacy.scores.x"));
        assert!(!extra.permits("legacy.other.x"));
    }
}
