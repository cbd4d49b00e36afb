use std::fmt;

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

/// A password of 8–128 characters (counted after trimming, hashed exactly as sent).
/// Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, String> {
        let length = raw.trim().chars().count();
        if length < 8 {
            return Err("must be at least 8 characters".to_owned());
        }
        if length > 128 {
            return Err("must be at most 128 characters".to_owned());
        }
        Ok(Self(raw))
    }

    /// Argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane). Costs tens of milliseconds of
    /// CPU, so it runs on the blocking pool, never on an async worker.
    pub async fn hash(self) -> Result<PasswordHash, String> {
        tokio::task::spawn_blocking(move || self.hash_blocking())
            .await
            .map_err(|err| err.to_string())?
    }

    fn hash_blocking(&self) -> Result<PasswordHash, String> {
        let params = Params::new(19 * 1024, 2, 1, None).map_err(|err| err.to_string())?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        argon2
            .hash_password(self.0.as_bytes(), &salt)
            .map(|hash| PasswordHash(hash.to_string()))
            .map_err(|err| err.to_string())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A PHC-format Argon2id hash. Stored, never returned, never shown by `Debug`.
#[derive(Clone)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn into_string(self) -> String {
        self.0
    }

    pub fn verify(&self, candidate: &str) -> bool {
        use argon2::password_hash::PasswordVerifier;
        argon2::password_hash::PasswordHash::new(&self.0).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(candidate.as_bytes(), &parsed)
                .is_ok()
        })
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_enforced() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("       x       ".into()).is_err());
        assert!(Password::parse("x".repeat(129)).is_err());
        assert!(Password::parse("correct horse".into()).is_ok());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hash = Password::parse("correct horse".into())
            .unwrap()
            .hash()
            .await
            .unwrap();
        assert!(
            hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.0
        );
        assert!(hash.verify("correct horse"));
        assert!(!hash.verify("wrong horse"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let password = Password::parse("correct horse".into()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
