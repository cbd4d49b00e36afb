//! A database URL and the engine it names, decided once from its scheme where it is configured.
//! Every other part asks `kind()`; none looks at the URL's text again. Shown (`Display`,
//! `Debug`), it never shows its password.

use std::fmt;
use std::str::FromStr;

/// The engines the service runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
    MySql,
    Mongo,
}

impl DatabaseKind {
    /// The engine a URL's scheme names (`mariadb:` is MySQL's protocol).
    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            "mongodb" | "mongodb+srv" => Some(Self::Mongo),
            _ => None,
        }
    }
}

/// A URL whose scheme names no engine the service runs on.
#[derive(Debug, thiserror::Error)]
#[error("must start with postgres://, mysql://, sqlite: or mongodb://")]
pub struct UnsupportedUrl;

#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    kind: DatabaseKind,
}

impl DatabaseUrl {
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The URL itself, password included: for the driver only.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL with its password replaced, for log lines and error messages.
    pub fn masked(&self) -> String {
        mask_password(&self.url)
    }
}

impl FromStr for DatabaseUrl {
    type Err = UnsupportedUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, _) = url.split_once(':').ok_or(UnsupportedUrl)?;
        let kind = DatabaseKind::of_scheme(scheme).ok_or(UnsupportedUrl)?;
        // `sqlite:` needs no slashes; the others name a server.
        if kind != DatabaseKind::Sqlite && !url[scheme.len()..].starts_with("://") {
            return Err(UnsupportedUrl);
        }
        // The SQL drivers know MariaDB by MySQL's scheme.
        let url = match scheme {
            "mariadb" => url.replacen("mariadb://", "mysql://", 1),
            _ => url.to_owned(),
        };
        Ok(Self { url, kind })
    }
}

impl PartialEq<&str> for DatabaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.url == *other
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.kind, self.masked())
    }
}

/// The URL with its password replaced, for log lines and error messages.
pub fn mask_password(url: &str) -> String {
    // MongoDB URLs may list several hosts, which the URL parser refuses.
    if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
        return mask_multi_host(url);
    }
    migration::command::mask_password(url)
}

/// The URL with its password replaced. MongoDB URLs may name several hosts
/// (`mongodb://u:p@a:27017,b:27017/db`), which a generic URL parser refuses, so the user
/// information is cut out by hand.
fn mask_multi_host(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable database URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_decides_the_engine() {
        let cases = [
            ("sqlite://data.db?mode=rwc", DatabaseKind::Sqlite),
            ("sqlite::memory:", DatabaseKind::Sqlite),
            ("postgres://u@h/db", DatabaseKind::Postgres),
            ("postgresql://u@h/db", DatabaseKind::Postgres),
            ("mysql://u@h/db", DatabaseKind::MySql),
            ("mongodb://h:27017/db", DatabaseKind::Mongo),
            ("mongodb+srv://cluster.example.com/db", DatabaseKind::Mongo),
        ];
        for (url, kind) in cases {
            assert_eq!(url.parse::<DatabaseUrl>().unwrap().kind(), kind, "{url}");
        }
        let mariadb: DatabaseUrl = "mariadb://u:p@h/db".parse().unwrap();
        assert_eq!(mariadb.kind(), DatabaseKind::MySql);
        assert_eq!(mariadb.as_str(), "mysql://u:p@h/db");
        for url in ["redis://h", "postgres:h/db", "data.db", ""] {
            assert!(url.parse::<DatabaseUrl>().is_err(), "{url}");
        }
    }

    #[test]
    fn shown_it_hides_the_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/shop".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/shop");
        assert!(!format!("{url:?}").contains("s3cret"));
        let mongo: DatabaseUrl = "mongodb://app:s3cret@a:27017,b:27017/shop".parse().unwrap();
        assert_eq!(mongo.to_string(), "mongodb://app:***@a:27017,b:27017/shop");
    }
}
