use std::fmt;
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::{self, Output, ParamsString, SaltString, rand_core::OsRng};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

/// OWASP's Argon2id parameters: 19 MiB, 2 passes, 1 lane, 32-byte output.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// A password of 8–128 characters (counted after trimming, hashed exactly as sent).
/// Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

/// Where hashing happens: at most one hash per core at a time, each in a 19 MiB work area that is
/// allocated once and reused. Letting every request allocate its own area on whichever blocking
/// thread it lands on made the allocator keep gigabytes under a burst of sign-ups.
struct Workspace {
    permits: Semaphore,
    areas: Mutex<Vec<Vec<Block>>>,
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| Workspace {
        permits: Semaphore::new(std::thread::available_parallelism().map_or(2, usize::from)),
        areas: Mutex::new(Vec::new()),
    })
}

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

    /// Argon2id, on the blocking pool (it costs tens of milliseconds of CPU, which must never
    /// stall an async worker), one hash per core at a time.
    pub async fn hash(self) -> Result<PasswordHash, String> {
        let workspace = workspace();
        let _permit = workspace
            .permits
            .acquire()
            .await
            .map_err(|err| err.to_string())?;
        let area = workspace
            .areas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_else(|| vec![Block::default(); MEMORY_KIB as usize]);
        let (hash, area) = tokio::task::spawn_blocking(move || {
            let mut area = area;
            (self.hash_in(&mut area), area)
        })
        .await
        .map_err(|err| err.to_string())?;
        workspace
            .areas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(area);
        hash
    }

    fn hash_in(&self, area: &mut [Block]) -> Result<PasswordHash, String> {
        let params = Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_LEN))
            .map_err(|err| err.to_string())?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_raw = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|err| err.to_string())?;
        let mut output = [0u8; OUTPUT_LEN];
        argon2
            .hash_password_into_with_memory(self.0.as_bytes(), salt_raw, &mut output, area)
            .map_err(|err| err.to_string())?;
        let phc = password_hash::PasswordHash {
            algorithm: ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|err| err.to_string())?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&output).map_err(|err| err.to_string())?),
        };
        Ok(PasswordHash(phc.to_string()))
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
