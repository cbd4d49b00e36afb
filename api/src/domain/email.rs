/// A syntactically valid address of at most 254 characters, trimmed and lower-cased, so that
/// equality (and the unique index) is case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// 254: the longest path SMTP carries (RFC 5321 §4.5.3.1.3).
    pub const MAX_LENGTH: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if trimmed.contains('\0') {
            return Err("must be a valid email address".to_owned());
        }
        // Counted as stored: lower-casing can lengthen an address ("İ" becomes "i̇", two chars),
        // and the column holds 254.
        let lowered = trimmed.to_lowercase();
        if lowered.chars().count() > Self::MAX_LENGTH {
            return Err(format!("must be at most {} characters", Self::MAX_LENGTH));
        }
        if !email_address::EmailAddress::is_valid(trimmed) {
            return Err("must be a valid email address".to_owned());
        }
        Ok(Self(lowered))
    }

    /// The form a lookup compares with: trimmed and lower-cased, but not validated (a filter
    /// for an impossible address simply matches nothing).
    pub fn normalize_for_lookup(raw: &str) -> String {
        raw.trim().to_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in ["", "ada", "ada@", "@example.com", "a b@example.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
        // 254 characters as sent, 286 once lower-cased.
        let label = "x".repeat(63);
        let domain = format!("{label}.{label}.{label}.{}.com", "y".repeat(25));
        let lengthened = format!("{}@{domain}", "İ".repeat(32));
        assert_eq!(lengthened.chars().count(), 254);
        assert_eq!(
            Email::parse(&lengthened).map(Email::into_string),
            Err("must be at most 254 characters".to_owned())
        );
    }
}
