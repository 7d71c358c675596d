//! Topic names and the patterns that grant access to them (docs/protocol.md 1.3, 2.3).

/// Why a topic name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty or longer than 200 bytes.
    #[error("topic must be 1 to 200 bytes")]
    Length,
    /// Contains a byte that is not printable ASCII, a space, or `*`.
    #[error("topic must be printable ASCII without spaces or '*'")]
    Character,
    /// A pattern with `*` before its end (`a:*:b`): only a prefix match is supported.
    #[error("topic pattern may have '*' only at its end (a prefix match such as room:*)")]
    InnerStar,
}

/// Longest topic name.
pub const MAX_TOPIC_BYTES: usize = 200;

/// Checks a topic name: 1 to 200 bytes of printable ASCII, no spaces, no `*`.
pub fn validate(name: &str) -> Result<(), TopicError> {
    if name.is_empty() || name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::Length);
    }
    if name
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'*')
    {
        Ok(())
    } else {
        Err(TopicError::Character)
    }
}

/// An exact topic name, or a prefix followed by `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicPattern {
    /// Matches exactly this name.
    Exact(Box<str>),
    /// Matches every name starting with this prefix (may be empty: `*` matches all).
    Prefix(Box<str>),
}

impl TopicPattern {
    /// Parses `name` or `prefix*`.
    pub fn parse(s: &str) -> Result<TopicPattern, TopicError> {
        // Said apart from the other characters: `*` is allowed, but only as the last one.
        if s.strip_suffix('*').unwrap_or(s).contains('*') {
            return Err(TopicError::InnerStar);
        }
        match s.strip_suffix('*') {
            Some(prefix) => {
                if !prefix.is_empty() {
                    validate(prefix)?;
                }
                Ok(TopicPattern::Prefix(prefix.into()))
            }
            None => {
                validate(s)?;
                Ok(TopicPattern::Exact(s.into()))
            }
        }
    }

    /// Whether `topic` is covered by this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(t) => &**t == topic,
            TopicPattern::Prefix(p) => topic.starts_with(&**p),
        }
    }
}

/// Whether any pattern in `patterns` covers `topic`.
pub fn allowed(patterns: &[TopicPattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate("room:1").is_ok());
        assert!(validate(&"a".repeat(200)).is_ok());
        assert_eq!(validate(""), Err(TopicError::Length));
        assert_eq!(validate(&"a".repeat(201)), Err(TopicError::Length));
        assert_eq!(validate("a b"), Err(TopicError::Character));
        assert_eq!(validate("a*"), Err(TopicError::Character));
        assert_eq!(validate("é"), Err(TopicError::Character));
        assert_eq!(validate("a\tb"), Err(TopicError::Character));
    }

    #[test]
    fn patterns() {
        let p = TopicPattern::parse("room:*").unwrap();
        assert!(p.matches("room:1"));
        assert!(p.matches("room:"));
        assert!(!p.matches("rooms"));
        let e = TopicPattern::parse("news").unwrap();
        assert!(e.matches("news"));
        assert!(!e.matches("news2"));
        let all = TopicPattern::parse("*").unwrap();
        assert!(all.matches("anything"));
        assert_eq!(TopicPattern::parse("a*b"), Err(TopicError::InnerStar));
        assert_eq!(TopicPattern::parse("a:*:b*"), Err(TopicError::InnerStar));
        assert_eq!(TopicPattern::parse("**"), Err(TopicError::InnerStar));
        assert!(TopicPattern::parse("a b*").is_err());
        assert!(allowed(&[e, p], "room:9"));
    }
}
