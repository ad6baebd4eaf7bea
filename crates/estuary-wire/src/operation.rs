//! The EST operations and their path segments (RFC 7030 §3.2.2), shared by the server's router
//! and the client's URLs.

use std::fmt;

/// An EST operation (RFC 7030 §3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /cacerts` (§4.1).
    CaCerts,
    /// `POST /simpleenroll` (§4.2.1).
    SimpleEnroll,
    /// `POST /simplereenroll` (§4.2.2).
    SimpleReenroll,
    /// `GET /csrattrs` (§4.5).
    CsrAttrs,
    /// `POST /fullcmc` (§4.3).
    FullCmc,
    /// `POST /serverkeygen` (§4.4).
    ServerKeyGen,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 6] = [
        Operation::CaCerts,
        Operation::SimpleEnroll,
        Operation::SimpleReenroll,
        Operation::CsrAttrs,
        Operation::FullCmc,
        Operation::ServerKeyGen,
    ];

    /// The operation a path segment names (exact, case-sensitive), if any.
    pub fn parse(segment: &str) -> Option<Self> {
        Operation::ALL.into_iter().find(|op| op.as_str() == segment)
    }

    /// The operation's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CaCerts => "cacerts",
            Operation::SimpleEnroll => "simpleenroll",
            Operation::SimpleReenroll => "simplereenroll",
            Operation::CsrAttrs => "csrattrs",
            Operation::FullCmc => "fullcmc",
            Operation::ServerKeyGen => "serverkeygen",
        }
    }

    /// Whether the operation is a `GET` (`cacerts`, `csrattrs`); the others are `POST`s.
    pub fn is_get(self) -> bool {
        matches!(self, Operation::CaCerts | Operation::CsrAttrs)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(Operation::parse("CACERTS"), None);
        assert_eq!(Operation::parse(""), None);
        assert!(Operation::CsrAttrs.is_get());
        assert!(!Operation::SimpleEnroll.is_get());
    }
}
