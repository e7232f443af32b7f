//! Errors on one line with every cause: `reqwest` says "error sending
//! request for url (...)" and keeps the useful part ("connection refused",
//! "operation timed out") in its sources.

/// `e` and each cause under it, joined by ": ", skipping a cause whose text
/// is already there (many errors quote their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "error sending request: connection refused");
        let plain = std::io::Error::other("x");
        assert_eq!(error_chain(&plain), "x");
    }
}
