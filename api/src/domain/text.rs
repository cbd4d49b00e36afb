/// Text whose length, counted in Unicode scalar values after trimming surrounding whitespace, lies
/// within `MIN..=MAX`. It keeps the trimmed text and is otherwise exactly as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text<const MIN: usize, const MAX: usize>(String);

impl<const MIN: usize, const MAX: usize> Text<MIN, MAX> {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        // PostgreSQL cannot store NUL in text; no name or SKU needs one.
        if trimmed.contains('\0') {
            return Err("must not contain NUL characters".to_owned());
        }
        let length = trimmed.chars().count();
        if length < MIN {
            return Err(if MIN == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {MIN} characters")
            });
        }
        if length > MAX {
            return Err(format!("must be at most {MAX} characters"));
        }
        Ok(Self(trimmed.to_owned()))
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
    fn length_is_counted_in_scalar_values_after_trimming() {
        assert_eq!(Text::<1, 3>::parse("  ééé \n").unwrap().as_str(), "ééé");
        assert!(Text::<1, 3>::parse("éééé").is_err());
        assert!(Text::<1, 3>::parse("   ").is_err());
        assert_eq!(Text::<1, 3>::parse("a b").unwrap().as_str(), "a b");
        assert!(Text::<1, 3>::parse("a\0b").is_err());
    }
}
